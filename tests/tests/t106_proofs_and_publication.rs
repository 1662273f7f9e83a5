//! Proofs and checkpoints in a cluster whose leaders are killed and restarted, and the
//! checkpoint directories of replicas that caught up by installing a snapshot
//! (issue 26, item 5).
//!
//! `proofs_on_new_and_restarted_leaders_find_every_acknowledged_event`, in steps:
//! 1. three nodes, `ClusterInit{3, 3}`, [`TENANTS_PER_SHARD`] tenants per shard;
//! 2. [`ROUNDS`] times: record a batch, ask every tenant's checkpoint with `seal_now`
//!    (the largest tree size seen per tenant is kept), `kill -9` the leader of the
//!    round's shard, and right away, through the other nodes (strong reads, retried only
//!    while they answer UNAVAILABLE): `GetProof` of every acknowledged event finds it at
//!    its receipt's seq, and neither the proof's checkpoint nor `GetCheckpoint` is
//!    older than one seen before; then restart the node and read the same through it.
//!
//! `every_replica_publishes_every_checkpoint_after_a_snapshot_install`, in steps:
//! 1. three nodes, a snapshot every [`SNAPSHOT_INTERVAL`] entries, `ClusterInit{3, 3}`;
//! 2. record events and a checkpoint per tenant; `kill -9` node 3; record
//!    [`OUTAGE_ROUNDS`] batches, each followed by a `seal_now` checkpoint per tenant
//!    (several snapshot intervals); restart node 3: it installs snapshots (checked in
//!    its log);
//! 3. the three checkpoint directories (`<data dir>/checkpoints`) come to hold the same
//!    lines, every tenant's up to its latest checkpoint (waited for up to
//!    [`PUBLISH_WAIT`]: publication runs behind apply).
//!
//! Node logs are `<dir>/node<i>/traild.log`; the directory is kept when a test fails.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use trail_proto::v1;
use trail_tests::cluster::{
    record_until_acked, remember, tenants_per_shard, AckedMap, NodeClient, Retries,
};
use trail_tests::{events_of, Cluster, Traild};

const NODES: usize = 3;
const SHARDS: u32 = 3;
const REPLICAS: u32 = 3;
const TENANTS_PER_SHARD: usize = 2;
const ROUNDS: usize = 3;
const SNAPSHOT_INTERVAL: u64 = 16;
const OUTAGE_ROUNDS: usize = 3 * SNAPSHOT_INTERVAL as usize;
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a read is retried while it answers UNAVAILABLE (a shard electing).
const READ_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
const PUBLISH_WAIT: Duration = Duration::from_secs(30);

/// `call` until it answers other than UNAVAILABLE (a shard electing, a node down), for
/// up to [`READ_RETRY_TIMEOUT`].
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = Instant::now();
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                ) && started.elapsed() < READ_RETRY_TIMEOUT =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

async fn checkpoint(
    client: &NodeClient,
    tenant: &str,
    seal_now: bool,
) -> Result<v1::Checkpoint, tonic::Status> {
    let response = retrying(|| {
        let mut rpc = client.client.clone();
        let request = v1::GetCheckpointRequest {
            tenant_id: tenant.to_string(),
            seal_now,
            ..Default::default()
        };
        async move { rpc.get_checkpoint(request).await }
    })
    .await?;
    Ok(response.checkpoint.expect("a checkpoint"))
}

/// Every acknowledged event has a proof at its seq through `client`, and no checkpoint
/// it is given is older than `seen` (raised to what it sees).
async fn check_reads(
    client: &NodeClient,
    acked: &AckedMap,
    events: &[v1::Event],
    seen: &mut BTreeMap<String, u64>,
    problems: &mut Vec<String>,
) {
    let node = client.node_id;
    for event in events {
        let expected = &acked[&event.event_id];
        let proof = retrying(|| {
            let mut rpc = client.client.clone();
            let request = v1::GetProofRequest {
                tenant_id: event.tenant_id.clone(),
                event_id: event.event_id.clone(),
                tree_size: 0,
            };
            async move { rpc.get_proof(request).await }
        })
        .await;
        match proof {
            Ok(proof) if proof.seq == expected.seq => {
                let size = proof
                    .checkpoint
                    .map_or(0, |checkpoint| checkpoint.tree_size);
                let before = seen.entry(event.tenant_id.clone()).or_default();
                if size < *before {
                    problems.push(format!(
                        "node {node}: proof of {} against checkpoint {size}, older than {before}",
                        event.event_id
                    ));
                }
                *before = (*before).max(size);
            }
            Ok(proof) => problems.push(format!(
                "node {node}: proof of {} at seq {}, acknowledged at {}",
                event.event_id, proof.seq, expected.seq
            )),
            Err(status) => problems.push(format!(
                "node {node}: GetProof {} (seq {}): {:?} {}",
                event.event_id,
                expected.seq,
                status.code(),
                status.message()
            )),
        }
    }
    let tenants: BTreeSet<&str> = events
        .iter()
        .map(|event| event.tenant_id.as_str())
        .collect();
    for tenant in tenants {
        match checkpoint(client, tenant, false).await {
            Ok(latest) => {
                let before = seen.entry(tenant.to_string()).or_default();
                if latest.tree_size < *before {
                    problems.push(format!(
                        "node {node}: GetCheckpoint {tenant} answered size {}, older than {before}",
                        latest.tree_size
                    ));
                }
                *before = (*before).max(latest.tree_size);
            }
            Err(status) => problems.push(format!(
                "node {node}: GetCheckpoint {tenant}: {:?} {}",
                status.code(),
                status.message()
            )),
        }
    }
}

async fn leader_of(cluster: &Cluster, shard: u32) -> u64 {
    let deadline = Instant::now() + LEADERS_TIMEOUT;
    loop {
        for node_id in cluster.running() {
            if cluster.led_by(node_id).await.contains(&shard) {
                return node_id;
            }
        }
        assert!(Instant::now() < deadline, "shard {shard} has no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proofs_on_new_and_restarted_leaders_find_every_acknowledged_event() {
    let mut cluster = Cluster::start(NODES).await;
    cluster.init(SHARDS, REPLICAS).await;
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    let tenants = tenants_per_shard("proof", SHARDS, TENANTS_PER_SHARD);
    let retries = Retries::default();
    let mut acked = AckedMap::new();
    let mut recorded: Vec<v1::Event> = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    for round in 0..ROUNDS {
        let clients = cluster.clients(&cluster.node_ids(), RPC_TIMEOUT);
        let events: Vec<v1::Event> = tenants
            .iter()
            .flat_map(|tenant| events_of(tenant, &format!("r{round}"), 2))
            .collect();
        let receipts = record_until_acked(&clients, &mut 0, &events, &retries, |_, _, _| {})
            .await
            .unwrap_or_else(|error| panic!("round {round}: {error}"));
        remember(&mut acked, &events, &receipts).expect("receipts");
        recorded.extend(events);
        for tenant in &tenants {
            let latest = checkpoint(&clients[0], tenant, true)
                .await
                .unwrap_or_else(|status| panic!("seal_now {tenant}: {status:?}"));
            seen.insert(tenant.clone(), latest.tree_size);
        }

        // The leader of this round's shard dies; the others elect a new one and are
        // read at once.
        let shard = (round as u32 % SHARDS) + 1;
        let killed = leader_of(&cluster, shard).await;
        cluster.node_mut(killed).kill9();
        let others: Vec<u64> = cluster
            .node_ids()
            .into_iter()
            .filter(|&node_id| node_id != killed)
            .collect();
        for client in cluster.clients(&others, RPC_TIMEOUT) {
            check_reads(&client, &acked, &recorded, &mut seen, &mut problems).await;
        }
        // Back, it may lead again: read through it too.
        cluster.node_mut(killed).spawn().await;
        cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
        let restarted = cluster.clients(&[killed], RPC_TIMEOUT);
        check_reads(&restarted[0], &acked, &recorded, &mut seen, &mut problems).await;
        eprintln!(
            "round {round}: killed node {killed} (leader of shard {shard}), {} events proved \
             through every node",
            recorded.len()
        );
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The lines of a node's checkpoint directory: per `tenant/stream`, tree size -> note.
type Published = BTreeMap<String, BTreeMap<u64, String>>;

/// The lines of a node's checkpoint directory.
fn published(data_dir: &Path) -> Published {
    let mut streams = Published::new();
    let root = data_dir.join("checkpoints");
    let Ok(tenants) = std::fs::read_dir(&root) else {
        return streams;
    };
    for tenant in tenants.flatten() {
        let Ok(stream_dirs) = std::fs::read_dir(tenant.path()) else {
            continue;
        };
        for stream in stream_dirs.flatten() {
            let name = format!(
                "{}/{}",
                tenant.file_name().to_string_lossy(),
                stream.file_name().to_string_lossy()
            );
            let lines = streams.entry(name.clone()).or_default();
            for day in std::fs::read_dir(stream.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = std::fs::read_to_string(day.path()).unwrap_or_default();
                for line in text.lines() {
                    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                        continue;
                    };
                    let size = value["tree_size"].as_u64().expect("tree_size");
                    let note = value["note"].as_str().expect("note").to_string();
                    if let Some(other) = lines.insert(size, note.clone()) {
                        assert_eq!(other, note, "{name}: two notes of size {size}");
                    }
                }
            }
        }
    }
    streams
}

fn node_log(node: &Traild) -> std::path::PathBuf {
    node.data_dir.join("traild.log")
}

/// The data shards the node logged an installed snapshot of after byte `offset` of its
/// log (snapshot names carry their shard: `<cluster>.s<shard>.e<epoch>...`).
fn installed_shards(node: &Traild, offset: usize) -> BTreeSet<u32> {
    let bytes = std::fs::read(node_log(node)).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes[offset.min(bytes.len())..]).into_owned();
    let mut shards = BTreeSet::new();
    for line in text
        .lines()
        .filter(|line| line.contains("installed a snapshot"))
    {
        let mut rest = line;
        while let Some(at) = rest.find(".s") {
            rest = &rest[at + 2..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !digits.is_empty() && rest[digits.len()..].starts_with(".e") {
                let shard: u32 = digits.parse().expect("digits");
                if shard != 0 {
                    shards.insert(shard);
                }
                break;
            }
        }
    }
    shards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_publishes_every_checkpoint_after_a_snapshot_install() {
    const NODE: u64 = 3;
    let interval = SNAPSHOT_INTERVAL.to_string();
    let mut cluster =
        Cluster::start_with_args(NODES, &["--snapshot-logs-since-last", &interval]).await;
    cluster.init(SHARDS, REPLICAS).await;
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    let tenants = tenants_per_shard("pub", SHARDS, TENANTS_PER_SHARD);
    let retries = Retries::default();
    let all = cluster.clients(&cluster.node_ids(), RPC_TIMEOUT);
    let events: Vec<v1::Event> = tenants
        .iter()
        .flat_map(|tenant| events_of(tenant, "first", 3))
        .collect();
    record_until_acked(&all, &mut 0, &events, &retries, |_, _, _| {})
        .await
        .unwrap_or_else(|error| panic!("first events: {error}"));
    for tenant in &tenants {
        checkpoint(&all[0], tenant, true).await.expect("checkpoint");
    }

    cluster.node_mut(NODE).kill9();
    let others: Vec<u64> = cluster
        .node_ids()
        .into_iter()
        .filter(|&node_id| node_id != NODE)
        .collect();
    let clients = cluster.clients(&others, RPC_TIMEOUT);
    let mut next_node = 0;
    for round in 0..OUTAGE_ROUNDS {
        let events: Vec<v1::Event> = tenants
            .iter()
            .flat_map(|tenant| events_of(tenant, &format!("out{round}"), 1))
            .collect();
        record_until_acked(&clients, &mut next_node, &events, &retries, |_, _, _| {})
            .await
            .unwrap_or_else(|error| panic!("outage round {round}: {error}"));
        for tenant in &tenants {
            checkpoint(&clients[round % clients.len()], tenant, true)
                .await
                .expect("checkpoint");
        }
    }

    let offset = std::fs::read(node_log(cluster.node(NODE))).map_or(0, |bytes| bytes.len());
    cluster.node_mut(NODE).spawn().await;
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    cluster.wait_converged(SHARDS, CONVERGE_TIMEOUT).await;
    let installed = installed_shards(cluster.node(NODE), offset);
    assert!(
        !installed.is_empty(),
        "node {NODE} installed no snapshot of a data shard (log: {})",
        node_log(cluster.node(NODE)).display()
    );
    eprintln!("node {NODE} installed snapshots of shards {installed:?}");

    let mut latest = BTreeMap::new();
    for tenant in &tenants {
        let checkpoint = checkpoint(&all[0], tenant, false).await.expect("latest");
        latest.insert(format!("{tenant}/0"), checkpoint.tree_size);
    }
    let deadline = Instant::now() + PUBLISH_WAIT;
    loop {
        let directories: Vec<(u64, Published)> = cluster
            .node_ids()
            .into_iter()
            .map(|node_id| (node_id, published(&cluster.node(node_id).data_dir)))
            .collect();
        let mut differences = Vec::new();
        for (node_id, streams) in &directories {
            for (stream, size) in &latest {
                let top = streams
                    .get(stream)
                    .and_then(|lines| lines.keys().next_back().copied())
                    .unwrap_or(0);
                if top != *size {
                    differences.push(format!(
                        "node {node_id}: {stream} published up to {top}, latest checkpoint {size}"
                    ));
                }
            }
            if streams != &directories[0].1 {
                let lines =
                    |streams: &Published| -> usize { streams.values().map(BTreeMap::len).sum() };
                differences.push(format!(
                    "node {node_id}: {} lines, node {}: {} lines",
                    lines(streams),
                    directories[0].0,
                    lines(&directories[0].1)
                ));
            }
        }
        if differences.is_empty() {
            let lines: usize = directories[0].1.values().map(BTreeMap::len).sum();
            eprintln!("the three checkpoint directories hold the same {lines} lines");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoint directories differ after {PUBLISH_WAIT:?}:\n{}",
            differences.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
