//! Shards added to a running index (`NodeIndex::add_shard`), as a cluster node does
//! when it learns its shards after it started.
//!
//! `added_shard_is_queried_correctly_and_resumes_after_restart`, in steps:
//! 1. open a node store with shard A, apply events to A, open the index over A alone
//!    (with a commit interval so long that nothing commits before `stop`);
//! 2. open shard B's keyspaces and apply events to it: B's queries (read from the store,
//!    the tail) equal a brute-force model;
//! 3. `add_shard(B)` (twice, and A again: no-ops), apply more to B: queries equal the
//!    model while nothing of B is visible in the indexes;
//! 4. stop the index (its last commit covers B): queries equal the model from the
//!    indexes alone, and the index holds one document per event of B;
//! 5. reopen the index over A alone, let it commit A's new events (B is not open), stop
//!    and reopen it over A again, then `add_shard(B)`: B resumes where it was (not
//!    rebuilt, no document twice), and its queries equal the model before and after
//!    the indexer caught up with new events;
//! 6. `request_reindex`: B is rebuilt too, and still holds one document per event.
//!
//! `shard_added_while_it_applies`: `add_shard` on another thread while the shard
//! applies batches; once caught up, the index holds each event exactly once.
//!
//! `shard_added_just_before_stop_is_committed_whole`: the indexer takes the shard up in
//! its last round; the last commit covers all of it.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use tantivy::collector::Count;
use tempfile::TempDir;
use trail_node::consensus::{Entry, LogId};
use trail_node::index::{shard_documents, IndexConfig, NodeIndex};
use trail_node::ledger::{ActorKind, EventRecord, LedgerCommand, Outcome};
use trail_node::query::{ActionMatch, Filters, Order};
use trail_node::shard::query::{self, AccessPath, Query};
use trail_node::storage::{NodeStore, ShardKeyspaces, StateMachine};

const SHARD_A: u32 = 1;
const SHARD_B: u32 = 2;
const TENANTS_PER_SHARD: usize = 2;
const ACTORS: [&str; 3] = ["usr_1", "usr_2", "svc_1"];
const ACTIONS: [&str; 4] = ["auth.login", "auth.logout", "role.assign", "doc.view"];
const RESOURCE_IDS: [&str; 3] = ["r1", "r2", "r3"];
const TIME_BASE_NS: i64 = 1_735_689_600_000_000_000;
const TIME_SLOTS: u64 = 16;
const PAGE_EVENTS: usize = 7;
const WAIT: Duration = Duration::from_secs(20);

/// One shard fed through the real state machine, with its model: per tenant, the
/// events applied, in seq order.
struct Shard {
    keyspaces: ShardKeyspaces,
    state_machine: StateMachine,
    next_index: u64,
    next_event: u64,
    applied: Vec<Vec<EventRecord>>,
}

impl Shard {
    fn open(store: &NodeStore, id: u32) -> Shard {
        let keyspaces = store.shard(id).expect("open shard keyspaces");
        let state_machine =
            StateMachine::open(store, &keyspaces, None).expect("open state machine");
        Shard {
            keyspaces,
            state_machine,
            next_index: 1,
            next_event: 0,
            applied: vec![Vec::new(); TENANTS_PER_SHARD],
        }
    }

    fn tenant(&self, tenant: usize) -> String {
        format!("ten_{}_{tenant}", self.keyspaces.shard)
    }

    fn events(&self) -> usize {
        self.applied.iter().map(Vec::len).sum()
    }

    /// Applies `count` events, spread over the tenants, in batches of at most 9.
    fn apply(&mut self, runtime: &tokio::runtime::Runtime, count: usize) {
        let mut left = count;
        while left > 0 {
            let batch_events = left.min(9);
            left -= batch_events;
            let mut events = Vec::with_capacity(batch_events);
            for _ in 0..batch_events {
                let number = self.next_event;
                self.next_event += 1;
                let tenant = (number % TENANTS_PER_SHARD as u64) as usize;
                let event = record(&self.tenant(tenant), self.keyspaces.shard, number);
                self.applied[tenant].push(event.clone());
                events.push(event);
            }
            let entry = Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), self.next_index),
                payload: EntryPayload::Normal(LedgerCommand::Append {
                    ingested_at_ns: TIME_BASE_NS + self.next_index as i64,
                    block_events_max: 4,
                    events,
                }),
            };
            self.next_index += 1;
            let responses = runtime
                .block_on(self.state_machine.apply(vec![entry]))
                .expect("apply");
            assert!(responses[0]
                .receipts
                .iter()
                .all(|receipt| !receipt.deduplicated));
        }
    }
}

/// Event `number` of a shard: its fields spread over the small vocabularies by a hash.
fn record(tenant_id: &str, shard: u32, number: u64) -> EventRecord {
    let hash = (number + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    let pick = |shift: u32, count: usize| ((hash >> shift) % count as u64) as usize;
    EventRecord {
        event_id: format!("evt_{shard}_{number}"),
        tenant_id: tenant_id.to_string(),
        actor_kind: ActorKind::from_u8(1 + pick(0, 3) as u8).expect("1..=3"),
        actor_id: ACTORS[pick(4, ACTORS.len())].to_string(),
        actor_email: String::new(),
        actor_name: String::new(),
        action: ACTIONS[pick(8, ACTIONS.len())].to_string(),
        resource_type: "doc".to_string(),
        resource_id: RESOURCE_IDS[pick(12, RESOURCE_IDS.len())].to_string(),
        outcome: Outcome::from_u8(1 + pick(16, 3) as u8).expect("1..=3"),
        occurred_at_ns: TIME_BASE_NS + (pick(20, TIME_SLOTS as usize) as i64) * 1_000_000_000,
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json: String::new(),
        subject_id: ACTORS[pick(4, ACTORS.len())].to_string(),
    }
}

/// The filters every check runs: none, each kind of term, a prefix, a time window.
fn filter_cases() -> Vec<Filters> {
    let slot = |slot: i64| Some(TIME_BASE_NS + slot * 1_000_000_000);
    vec![
        Filters::default(),
        Filters {
            actor_id: Some("usr_1".into()),
            ..Filters::default()
        },
        Filters {
            action: Some(ActionMatch::Exact("auth.login".into())),
            ..Filters::default()
        },
        Filters {
            action: Some(ActionMatch::Prefix("auth.".into())),
            outcome: Outcome::from_u8(1),
            ..Filters::default()
        },
        Filters {
            resource_id: Some("r2".into()),
            actor_kind: ActorKind::from_u8(2),
            ..Filters::default()
        },
        Filters {
            actor_id: Some("svc_1".into()),
            start_time_ns: slot(3),
            end_time_ns: slot(12),
            ..Filters::default()
        },
    ]
}

/// The filter semantics, written out independently of `Filters::matches`.
fn model_matches(filters: &Filters, event: &EventRecord) -> bool {
    let action_ok = match &filters.action {
        None => true,
        Some(ActionMatch::Exact(action)) => action == &event.action,
        Some(ActionMatch::Prefix(prefix)) => event.action.starts_with(prefix.as_str()),
    };
    filters
        .actor_id
        .as_ref()
        .is_none_or(|id| id == &event.actor_id)
        && filters
            .actor_kind
            .is_none_or(|kind| kind == event.actor_kind)
        && action_ok
        && filters
            .resource_id
            .as_ref()
            .is_none_or(|id| id == &event.resource_id)
        && filters
            .outcome
            .is_none_or(|outcome| outcome == event.outcome)
        && filters
            .start_time_ns
            .is_none_or(|start| start <= event.occurred_at_ns)
        && filters
            .end_time_ns
            .is_none_or(|end| event.occurred_at_ns < end)
}

/// `(occurred_at, seq, event_id)` of the model's matches, in the query's order.
fn expected(
    shard: &Shard,
    tenant: usize,
    filters: &Filters,
    order: Order,
) -> Vec<(i64, u64, String)> {
    let mut matches: Vec<(i64, u64, String)> = shard.applied[tenant]
        .iter()
        .enumerate()
        .filter(|(_, event)| model_matches(filters, event))
        .map(|(index, event)| {
            (
                event.occurred_at_ns,
                index as u64 + 1,
                event.event_id.clone(),
            )
        })
        .collect();
    matches.sort();
    if order == Order::NewestFirst {
        matches.reverse();
    }
    matches
}

/// Pages through every filter, order and access path of every tenant of the shard,
/// and counts: all must equal the model. Returns the most tail events a query read.
fn check_queries(shard: &Shard, index: &NodeIndex) -> u64 {
    let mut tail_events_max = 0;
    for tenant in 0..TENANTS_PER_SHARD {
        let tenant_id = shard.tenant(tenant);
        for filters in filter_cases() {
            for order in [Order::NewestFirst, Order::OldestFirst] {
                let want = expected(shard, tenant, &filters, order);
                for path in [None, Some(AccessPath::TimeIndex), Some(AccessPath::Terms)] {
                    let mut got = Vec::new();
                    let mut after = None;
                    loop {
                        let mut query = Query::new(&tenant_id, filters.clone(), PAGE_EVENTS, order);
                        query.after = after;
                        query.path = path;
                        let page = query::run(&shard.keyspaces, index, &query).expect("query runs");
                        tail_events_max = tail_events_max.max(page.tail_events);
                        for event in &page.events {
                            assert_eq!(event.stored.event.tenant_id, tenant_id);
                            got.push((
                                event.stored.event.occurred_at_ns,
                                event.stored.seq,
                                event.stored.event.event_id.clone(),
                            ));
                        }
                        match page.next_after {
                            Some(position) => after = Some(position),
                            None => break,
                        }
                        assert!(got.len() <= want.len() + PAGE_EVENTS, "runaway paging");
                    }
                    assert_eq!(
                        got, want,
                        "shard {} {filters:?} {order:?} {path:?}",
                        shard.keyspaces.shard
                    );
                }
            }
            let count =
                query::count(&shard.keyspaces, index, &tenant_id, &filters).expect("count runs");
            let want = expected(shard, tenant, &filters, Order::NewestFirst).len() as u64;
            assert_eq!(
                count, want,
                "count of shard {} {filters:?}",
                shard.keyspaces.shard
            );
        }
    }
    tail_events_max
}

/// The shard's documents in the visible index.
fn documents(index: &NodeIndex, shard: u32) -> usize {
    index
        .visible()
        .view
        .searcher
        .search(&shard_documents(index.fields(), shard), &Count)
        .expect("count documents")
}

/// Waits until the whole shard is visible in the index (no tail) with one document per
/// event; panics after `WAIT`.
fn wait_indexed(shard: &Shard, index: &NodeIndex) {
    let deadline = Instant::now() + WAIT;
    loop {
        let tail_events_max = check_queries(shard, index);
        let documents = documents(index, shard.keyspaces.shard);
        if tail_events_max == 0 && documents == shard.events() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "shard {}: {tail_events_max} tail events, {documents} documents of {}",
            shard.keyspaces.shard,
            shard.events()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The index over one shard, with this commit interval.
fn open_index(store: &NodeStore, shard: &Shard, commit_interval: Duration) -> NodeIndex {
    let mut config = IndexConfig::new(&store.data_dir);
    config.commit_interval = commit_interval;
    config.poll_interval = Duration::from_millis(1);
    NodeIndex::open(store, std::slice::from_ref(&shard.keyspaces), config).expect("open index")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn added_shard_is_queried_correctly_and_resumes_after_restart() {
    let runtime = runtime();
    let dir = TempDir::new().expect("temporary directory");
    let store = NodeStore::open(dir.path()).expect("open node store");
    let mut shard_a = Shard::open(&store, SHARD_A);
    shard_a.apply(&runtime, 20);
    // 1. Nothing commits before `stop`: every query below reads B from the store.
    let index = open_index(&store, &shard_a, Duration::from_secs(3_600));

    // 2. B, unknown to the index.
    let mut shard_b = Shard::open(&store, SHARD_B);
    shard_b.apply(&runtime, 30);
    assert!(index.progress(SHARD_B).is_none());
    assert_eq!(
        check_queries(&shard_b, &index),
        15,
        "all of a tenant is tail"
    );

    // 3. Added: known at once, its events before the add are its rebuild.
    index.add_shard(&shard_b.keyspaces).expect("add shard B");
    assert!(
        index.progress(SHARD_B).is_some(),
        "B is known after add_shard"
    );
    index
        .add_shard(&shard_b.keyspaces)
        .expect("adding B again is a no-op");
    index
        .add_shard(&shard_a.keyspaces)
        .expect("adding A again is a no-op");
    shard_b.apply(&runtime, 40);
    assert_eq!(
        check_queries(&shard_b, &index),
        35,
        "nothing of B is visible yet"
    );

    // 4. The last commit covers B.
    index.stop();
    assert_eq!(
        check_queries(&shard_b, &index),
        0,
        "B is all in the indexes"
    );
    assert_eq!(documents(&index, SHARD_B), 70);
    let indexed_through = index
        .progress(SHARD_B)
        .expect("B")
        .indexed_through
        .load(AtomicOrdering::SeqCst);
    assert_eq!(indexed_through, shard_b.next_index - 1);
    assert!(
        index.add_shard(&shard_b.keyspaces).is_ok(),
        "known: a no-op"
    );
    drop(index);

    // 5. Reopened over A alone; a commit of A's new events carries B's resume point on,
    //    through one more restart.
    let index = open_index(&store, &shard_a, Duration::from_millis(3));
    assert!(index.progress(SHARD_B).is_none());
    shard_a.apply(&runtime, 10);
    assert!(index.wait_caught_up(std::slice::from_ref(&shard_a.keyspaces), WAIT));
    assert_eq!(check_queries(&shard_b, &index), 35, "B is not added: tail");
    index.stop();
    drop(index);
    let index = open_index(&store, &shard_a, Duration::from_millis(3));
    index
        .add_shard(&shard_b.keyspaces)
        .expect("add shard B again");
    let progress = index.progress(SHARD_B).expect("B is known after add_shard");
    assert_eq!(
        progress.indexed_through.load(AtomicOrdering::SeqCst),
        indexed_through,
        "B resumes where it was"
    );
    assert_eq!(
        progress.rebuild_remaining.load(AtomicOrdering::SeqCst),
        0,
        "B is not rebuilt"
    );
    wait_indexed(&shard_b, &index);
    shard_b.apply(&runtime, 30);
    check_queries(&shard_b, &index);
    let both = [shard_a.keyspaces.clone(), shard_b.keyspaces.clone()];
    assert!(index.wait_caught_up(&both, WAIT));
    assert_eq!(check_queries(&shard_b, &index), 0);
    assert_eq!(documents(&index, SHARD_B), 100, "no document twice");
    check_queries(&shard_a, &index);

    // 6. A reindex covers the added shard.
    index.request_reindex().expect("no reindex running");
    shard_b.apply(&runtime, 5);
    check_queries(&shard_b, &index);
    wait_indexed(&shard_b, &index);
    wait_indexed(&shard_a, &index);
    index.stop();
}

#[test]
fn shard_added_while_it_applies() {
    let runtime = runtime();
    let dir = TempDir::new().expect("temporary directory");
    let store = NodeStore::open(dir.path()).expect("open node store");
    let shard_a = Shard::open(&store, SHARD_A);
    let index = open_index(&store, &shard_a, Duration::from_millis(3));
    let mut shard_b = Shard::open(&store, SHARD_B);
    shard_b.apply(&runtime, 50);
    let adder = {
        let index = index.clone();
        let keyspaces = shard_b.keyspaces.clone();
        std::thread::spawn(move || index.add_shard(&keyspaces))
    };
    for _ in 0..20 {
        shard_b.apply(&runtime, 9);
        check_queries(&shard_b, &index);
    }
    adder.join().expect("adder thread").expect("add shard B");
    assert!(index.wait_caught_up(std::slice::from_ref(&shard_b.keyspaces), WAIT));
    assert_eq!(check_queries(&shard_b, &index), 0);
    assert_eq!(documents(&index, SHARD_B), shard_b.events());
    index.stop();
}

/// A shard added just before `stop`, so that the indexer takes it up in its last round:
/// that round rebuilds it whole and the last commit covers it. (The rebuild once spent
/// its first round learning its streams' ingest times, so such a shard was left out.)
#[test]
fn shard_added_just_before_stop_is_committed_whole() {
    let runtime = runtime();
    let dir = TempDir::new().expect("temporary directory");
    let store = NodeStore::open(dir.path()).expect("open node store");
    let shard_a = Shard::open(&store, SHARD_A);
    let index = open_index(&store, &shard_a, Duration::from_secs(3_600));
    let mut shard_b = Shard::open(&store, SHARD_B);
    shard_b.apply(&runtime, 40);
    index.add_shard(&shard_b.keyspaces).expect("add shard B");
    index.stop();
    assert_eq!(
        check_queries(&shard_b, &index),
        0,
        "B is all in the indexes"
    );
    assert_eq!(documents(&index, SHARD_B), 40);
}
