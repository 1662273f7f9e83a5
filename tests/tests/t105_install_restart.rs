//! A replica that caught up by installing a snapshot keeps its event ids across a
//! restart, and answers for them when it leads (issue 26, item 1).
//!
//! A snapshot install loads the event-id (dedup) index in bulk; fjall as published
//! replayed a journaled `clear()` over the tables ingested after it at every open, so
//! a replica that had installed a snapshot lost those ids when its node restarted:
//! leading again, it answered NOT_FOUND for acknowledged events and recorded a
//! client's retry a second time, forking its stream from the other replicas'.
//!
//! `a_replica_that_installed_a_snapshot_keeps_its_event_ids_across_a_restart`, in
//! steps:
//! 1. three nodes, `ClusterInit{6, 3}`, a snapshot every
//!    [`SNAPSHOT_INTERVAL`] Raft entries (leaders purge their logs after each);
//! 2. record the *old* events: [`TENANTS_PER_SHARD`] tenants on each shard, receipts
//!    kept;
//! 3. `kill -9` node 3 (which every shard has a replica on, and which is the preferred
//!    leader of shards 3 and 6), record [`OUTAGE_BATCHES`] batches one after another
//!    (one Raft entry per shard each), restart node 3: it catches up by installing a
//!    snapshot of the shards (checked from its log: the installed shards are named);
//! 4. wait until every replica applied its leader's whole log, then `kill -9` node 3
//!    again and restart it: the reopen after the install is what lost the ids;
//! 5. make node 3 the leader of a shard it installed: leader balancing gives a
//!    preferred replica its shard back once the shard is idle (`node/mod.rs`,
//!    `balance_leaders`: rounds of 10 s), waited for up to [`BALANCE_WAIT`]; if it has
//!    not, the shard's leader is killed and restarted until node 3 wins the election
//!    ([`KILL_ATTEMPTS_MAX`] times at most). The log says which way it went;
//! 6. through node 3's client port: `GetEvent` (strong) of every old event answers it
//!    with its receipt's seq and leaf hash, and so does node 3's own replica
//!    (`trail-replica-read`) for every shard; `GetProof` of old events of the led
//!    shard proves them at their seq; resending every old event (same ids, same
//!    bodies) answers `deduplicated` with the original seq and leaf hash; the three
//!    replicas hold the same events at the same seqs and leaf hashes; node 3's status
//!    reports `dedup_rebuilt_ids == 0` on every shard (the index was whole, not
//!    rebuilt at open).
//!
//! Node logs are `<dir>/node<i>/traild.log`; the directory is kept when the test fails.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use trail_node::ledger::routing::shard_for_tenant;
use trail_proto::v1;
use trail_tests::cluster::{
    record_until_acked, remember, tenants_per_shard, Acked, AckedMap, NodeClient, Retries,
};
use trail_tests::{events_of, replica_read, Cluster, Traild};

const NODES: usize = 3;
const SHARDS: u32 = 6;
const REPLICAS: u32 = 3;
/// The node that installs snapshots, restarts and leads: the preferred leader of
/// shards 3 and 6 (`ClusterMap::place`: shard `s` prefers node `(s - 1) % 3 + 1`).
const NODE: u64 = 3;
/// Raft entries between snapshots (`--snapshot-logs-since-last`).
const SNAPSHOT_INTERVAL: u64 = 16;
const TENANTS_PER_SHARD: usize = 2;
/// Old events per tenant, recorded before the node goes down.
const OLD_EVENTS_PER_TENANT: usize = 12;
/// Batches recorded one after another while the node is down: each is at least one
/// Raft entry on every shard, several snapshot intervals in all.
const OUTAGE_BATCHES: usize = 5 * SNAPSHOT_INTERVAL as usize;
const RPC_TIMEOUT: Duration = Duration::from_secs(20);
const LEADERS_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long leader balancing may take to give node 3 a shard it installed (two or
/// three of its 10 s rounds after the restart).
const BALANCE_WAIT: Duration = Duration::from_secs(45);
/// Elections forced by killing a shard's leader, when balancing did not do it.
const KILL_ATTEMPTS_MAX: usize = 4;
/// How long a read is retried while it answers UNAVAILABLE (a shard electing).
const READ_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
const STILL_READ_ATTEMPTS: usize = 20;
/// Old events proved with `GetProof`, per tenant of the led shard.
const PROOFS_PER_TENANT: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_installed_a_snapshot_keeps_its_event_ids_across_a_restart() {
    let started = Instant::now();
    let log = |what: &str| eprintln!("[{:>6.1} s] {what}", started.elapsed().as_secs_f64());
    let interval = SNAPSHOT_INTERVAL.to_string();
    let mut cluster =
        Cluster::start_with_args(NODES, &["--snapshot-logs-since-last", &interval]).await;
    cluster.init(SHARDS, REPLICAS).await;
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    log(&format!(
        "3 nodes, {SHARDS} shards initialized in {}",
        cluster.dir().display()
    ));

    // Old events: what node 3 must still know after the install and the restart.
    let tenants = tenants_per_shard("old", SHARDS, TENANTS_PER_SHARD);
    let old_events: Vec<v1::Event> = tenants
        .iter()
        .flat_map(|tenant| events_of(tenant, "old", OLD_EVENTS_PER_TENANT))
        .collect();
    let all_clients = cluster.clients(&cluster.node_ids(), RPC_TIMEOUT);
    let retries = Retries::default();
    let mut acked = AckedMap::new();
    let receipts = record_until_acked(&all_clients, &mut 0, &old_events, &retries, |_, _, _| {})
        .await
        .unwrap_or_else(|error| panic!("old events: {error}"));
    remember(&mut acked, &old_events, &receipts).expect("old receipts");
    log(&format!("{} old events acknowledged", old_events.len()));

    // Node 3 down while the leaders snapshot and purge their logs past it.
    cluster.node_mut(NODE).kill9();
    let others: Vec<u64> = cluster
        .node_ids()
        .into_iter()
        .filter(|&node_id| node_id != NODE)
        .collect();
    let other_clients = cluster.clients(&others, RPC_TIMEOUT);
    let mut next_node = 0;
    for round in 0..OUTAGE_BATCHES {
        let events: Vec<v1::Event> = tenants
            .iter()
            .flat_map(|tenant| events_of(tenant, &format!("out{round}"), 1))
            .collect();
        let receipts = record_until_acked(
            &other_clients,
            &mut next_node,
            &events,
            &retries,
            |_, _, _| {},
        )
        .await
        .unwrap_or_else(|error| panic!("batch {round} with node {NODE} down: {error}"));
        remember(&mut acked, &events, &receipts).expect("outage receipts");
    }
    log(&format!(
        "node {NODE} down: {OUTAGE_BATCHES} batches ({} events) acknowledged",
        OUTAGE_BATCHES * tenants.len()
    ));

    // Node 3 back: it catches up by installing snapshots.
    let log_offset = log_len(cluster.node(NODE));
    cluster.node_mut(NODE).spawn().await;
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    cluster.wait_converged(SHARDS, CONVERGE_TIMEOUT).await;
    let installed = installed_shards(cluster.node(NODE), log_offset);
    log(&format!(
        "node {NODE} restarted and caught up; data shards it installed a snapshot of: \
         {installed:?}"
    ));
    assert!(
        !installed.is_empty(),
        "node {NODE} was down for {OUTAGE_BATCHES} entries per shard with snapshots every \
         {SNAPSHOT_INTERVAL} entries, yet installed no snapshot of a data shard (log: {})",
        node_log(cluster.node(NODE)).display()
    );

    // The restart that lost the ids: the databases reopen after the install.
    cluster.node_mut(NODE).kill9();
    cluster.node_mut(NODE).spawn().await;
    cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
    cluster.wait_converged(SHARDS, CONVERGE_TIMEOUT).await;
    log(&format!("node {NODE} restarted again after the install"));

    let (led, how) = lead_an_installed_shard(&mut cluster, &installed).await;
    log(&format!("node {NODE} leads shard {led}: {how}"));

    // Reads through node 3.
    let node_client = cluster
        .clients(&[NODE], RPC_TIMEOUT)
        .pop()
        .expect("one client");
    let old_acked: Vec<(&v1::Event, &Acked)> = old_events
        .iter()
        .map(|event| (event, &acked[&event.event_id]))
        .collect();
    let mut problems = Vec::new();
    for &(event, expected) in &old_acked {
        let shard = shard_for_tenant(&event.tenant_id, SHARDS);
        for (how, request) in [
            ("strong", strong_get_event(event)),
            ("replica", replica_read(get_event_request(event))),
        ] {
            match get_event(&node_client, request).await {
                Ok(stored)
                    if stored.seq == expected.seq && stored.leaf_hash == expected.leaf_hash => {}
                Ok(stored) => problems.push(format!(
                    "{how} GetEvent {} (shard {shard}): seq {} leaf {}, acknowledged as seq {} \
                     leaf {}",
                    event.event_id,
                    stored.seq,
                    hex(&stored.leaf_hash),
                    expected.seq,
                    hex(&expected.leaf_hash)
                )),
                Err(status) => problems.push(format!(
                    "{how} GetEvent {} (shard {shard}, seq {}): {:?} {}",
                    event.event_id,
                    expected.seq,
                    status.code(),
                    status.message()
                )),
            }
        }
    }
    assert_problems(&problems, "reading old events through node 3");
    log(&format!(
        "GetEvent of {} old events through node {NODE} (strong, and its own replica): \
         each at its receipt's seq and leaf hash",
        old_acked.len()
    ));

    let mut proved = 0;
    for &(event, expected) in old_acked
        .iter()
        .filter(|(event, _)| shard_for_tenant(&event.tenant_id, SHARDS) == led)
    {
        let index: usize = event
            .event_id
            .rsplit('-')
            .next()
            .and_then(|index| index.parse().ok())
            .expect("old event ids end in their index");
        if index >= PROOFS_PER_TENANT {
            continue;
        }
        let proof = get_proof(&node_client, event)
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "GetProof {} of {} (shard {led}, led by node {NODE}): {status}",
                    event.event_id, event.tenant_id
                )
            });
        assert_eq!(
            (proof.seq, proof.stream.as_str()),
            (expected.seq, expected.stream.as_str()),
            "GetProof {} through node {NODE}",
            event.event_id
        );
        proved += 1;
    }
    assert!(proved > 0, "no old event of shard {led} to prove");
    log(&format!(
        "GetProof of {proved} old events of shard {led} through node {NODE}: at their seqs"
    ));

    // Resends through node 3: the same events, answered with their original receipts.
    let node_only = cluster.clients(&[NODE], RPC_TIMEOUT);
    let resent = record_until_acked(&node_only, &mut 0, &old_events, &retries, |_, _, _| {})
        .await
        .unwrap_or_else(|error| panic!("resending old events through node {NODE}: {error}"));
    let mut problems = Vec::new();
    for (event, receipt) in old_events.iter().zip(&resent) {
        let expected = &acked[&event.event_id];
        if !receipt.deduplicated
            || receipt.seq != expected.seq
            || receipt.leaf_hash != expected.leaf_hash
        {
            problems.push(format!(
                "resent {} (shard {}): deduplicated={} seq {} leaf {}, acknowledged as seq {} \
                 leaf {}",
                event.event_id,
                shard_for_tenant(&event.tenant_id, SHARDS),
                receipt.deduplicated,
                receipt.seq,
                hex(&receipt.leaf_hash),
                expected.seq,
                hex(&expected.leaf_hash)
            ));
        }
    }
    assert_problems(&problems, "resending old events through node 3");
    log(&format!(
        "{} old events resent through node {NODE}: each deduplicated with its receipt",
        old_events.len()
    ));
    let still_leads = cluster.led_by(NODE).await;
    assert!(
        still_leads.contains(&led),
        "node {NODE} stopped leading shard {led} during the checks (it leads {still_leads:?}): \
         the strong reads and resends may have gone to another replica"
    );

    cluster.wait_converged(SHARDS, CONVERGE_TIMEOUT).await;
    let tenant_set: BTreeSet<String> = tenants.iter().cloned().collect();
    let check = cluster
        .check_replicas(
            SHARDS,
            &tenant_set,
            &acked,
            &HashSet::new(),
            STILL_READ_ATTEMPTS,
        )
        .await;
    log(&format!(
        "replicas identical: {} acknowledged events, each once at its seq on all 3",
        check.acked_found
    ));

    let status = cluster.node(NODE).status().await;
    let rebuilt: Vec<(u32, u64)> = status
        .shards
        .iter()
        .filter(|shard| shard.dedup_rebuilt_ids != 0)
        .map(|shard| (shard.shard_id, shard.dedup_rebuilt_ids))
        .collect();
    assert!(
        rebuilt.is_empty(),
        "node {NODE} rebuilt its dedup index at open (shard, ids): {rebuilt:?}; it lost ids"
    );
    log(&format!(
        "node {NODE}: dedup_rebuilt_ids 0 on every shard; done in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}

/// Makes node 3 the leader of one of `installed`, preferring the shards it is the
/// preferred leader of; returns the shard and how it came to lead it.
async fn lead_an_installed_shard(
    cluster: &mut Cluster,
    installed: &BTreeSet<u32>,
) -> (u32, String) {
    let waited = Instant::now();
    while waited.elapsed() < BALANCE_WAIT {
        let led: Vec<u32> = cluster
            .led_by(NODE)
            .await
            .into_iter()
            .filter(|shard| installed.contains(shard))
            .collect();
        if let Some(&shard) = led.first() {
            return (
                shard,
                format!(
                    "leader balancing gave it back {:.1} s after the restart",
                    waited.elapsed().as_secs_f64()
                ),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Balancing did not: force elections of a shard it installed by killing the
    // shard's leader, until node 3 wins one. A shard it prefers stays with it after.
    let target = installed
        .iter()
        .copied()
        .find(|shard| preferred_leader(*shard) == NODE)
        .or_else(|| installed.first().copied())
        .expect("installed shards");
    for attempt in 1..=KILL_ATTEMPTS_MAX {
        let leader = leader_of(cluster.node(NODE), target).await;
        if leader == NODE {
            return (
                target,
                format!(
                    "elected after {} kill(s) of the shard's leader",
                    attempt - 1
                ),
            );
        }
        cluster.node_mut(leader).kill9();
        let elected = wait_new_leader(cluster.node(NODE), target, leader).await;
        cluster.node_mut(leader).spawn().await;
        cluster.wait_leaders(SHARDS, LEADERS_TIMEOUT).await;
        cluster.wait_converged(SHARDS, CONVERGE_TIMEOUT).await;
        eprintln!(
            "balancing did not give node {NODE} a shard within {BALANCE_WAIT:?}; attempt \
             {attempt}: killed node {leader}, leader of shard {target}; node {elected} won"
        );
        if cluster.led_by(NODE).await.contains(&target) {
            return (
                target,
                format!("elected after {attempt} kill(s) of the shard's leader"),
            );
        }
    }
    panic!(
        "node {NODE} leads none of the shards it installed ({installed:?}) after \
         {BALANCE_WAIT:?} of leader balancing and {KILL_ATTEMPTS_MAX} kills of shard \
         {target}'s leader"
    );
}

/// The shard's leader as `node` sees it (0: none yet), waited for.
async fn leader_of(node: &Traild, shard: u32) -> u64 {
    let started = Instant::now();
    loop {
        let leader = node
            .try_status()
            .await
            .ok()
            .and_then(|status| status.shards.into_iter().find(|s| s.shard_id == shard))
            .map_or(0, |s| s.leader_node_id);
        if leader != 0 {
            return leader;
        }
        assert!(
            started.elapsed() < LEADERS_TIMEOUT,
            "node {NODE} knows no leader of shard {shard} after {LEADERS_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `node` knows a leader of `shard` other than `old_leader`; returns it.
async fn wait_new_leader(node: &Traild, shard: u32, old_leader: u64) -> u64 {
    let started = Instant::now();
    loop {
        let leader = leader_of(node, shard).await;
        if leader != old_leader {
            return leader;
        }
        assert!(
            started.elapsed() < LEADERS_TIMEOUT,
            "shard {shard} elected no leader other than the killed node {old_leader} within \
             {LEADERS_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Shard `shard`'s preferred leader in a cluster of [`NODES`] with [`REPLICAS`] each.
fn preferred_leader(shard: u32) -> u64 {
    u64::from(shard - 1) % NODES as u64 + 1
}

fn get_event_request(event: &v1::Event) -> v1::GetEventRequest {
    v1::GetEventRequest {
        tenant_id: event.tenant_id.clone(),
        event_id: event.event_id.clone(),
        consistency: v1::ReadConsistency::Strong as i32,
    }
}

fn strong_get_event(event: &v1::Event) -> tonic::Request<v1::GetEventRequest> {
    tonic::Request::new(get_event_request(event))
}

/// `GetEvent`, retried while it answers UNAVAILABLE.
async fn get_event(
    client: &NodeClient,
    request: tonic::Request<v1::GetEventRequest>,
) -> Result<v1::StoredEvent, tonic::Status> {
    let metadata = request.metadata().clone();
    let message = request.into_inner();
    let started = Instant::now();
    loop {
        let mut request = tonic::Request::new(message.clone());
        *request.metadata_mut() = metadata.clone();
        match client.client.clone().get_event(request).await {
            Ok(response) => {
                return response
                    .into_inner()
                    .event
                    .ok_or_else(|| tonic::Status::internal("GetEvent answered no event"))
            }
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && started.elapsed() < READ_RETRY_TIMEOUT =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

/// `GetProof` of `event` at the latest checkpoint, retried while it answers
/// UNAVAILABLE.
async fn get_proof(
    client: &NodeClient,
    event: &v1::Event,
) -> Result<v1::GetProofResponse, tonic::Status> {
    let started = Instant::now();
    loop {
        let request = v1::GetProofRequest {
            tenant_id: event.tenant_id.clone(),
            event_id: event.event_id.clone(),
            tree_size: 0,
        };
        match client.client.clone().get_proof(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    && started.elapsed() < READ_RETRY_TIMEOUT =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

fn assert_problems(problems: &[String], what: &str) {
    let shown: Vec<&String> = problems.iter().take(30).collect();
    assert!(
        problems.is_empty(),
        "{what}: {} problems (first {}): {shown:#?}",
        problems.len(),
        shown.len()
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn node_log(node: &Traild) -> std::path::PathBuf {
    node.data_dir.join("traild.log")
}

/// Bytes in the node's log so far.
fn log_len(node: &Traild) -> usize {
    std::fs::read(node_log(node)).map_or(0, |bytes| bytes.len())
}

/// The data shards the node logged an installed snapshot of after byte `offset` of its
/// log: the snapshot's name carries its shard (`<cluster>.s<shard>.e<epoch>...`,
/// `storage/snapshot_name.rs`).
fn installed_shards(node: &Traild, offset: usize) -> BTreeSet<u32> {
    let path = node_log(node);
    let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    let text = String::from_utf8_lossy(&bytes[offset.min(bytes.len())..]).into_owned();
    let mut shards = BTreeSet::new();
    for line in text
        .lines()
        .filter(|line| line.contains("installed a snapshot"))
    {
        if let Some(shard) = snapshot_shard(line) {
            if shard != 0 {
                shards.insert(shard);
            }
        }
    }
    shards
}

/// The shard in the first snapshot name (`.s<shard>.e<digits>.t`) of a log line.
fn snapshot_shard(line: &str) -> Option<u32> {
    let mut rest = line;
    while let Some(at) = rest.find(".s") {
        rest = &rest[at + 2..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && rest[digits.len()..].starts_with(".e") {
            return digits.parse().ok();
        }
    }
    None
}
