//! Queries against a brute-force model, on the real fjall store.
//!
//! Steps, for each generated case: open a node store in a temporary directory and
//! apply batches of random events of three tenants through the real state machine
//! (`RaftStateMachine::apply`, as the server does); then, for random filter
//! combinations, orders, page sizes and examined-event bounds, page through the query
//! with `shard::query::run`, passing each page's position on through a sealed and
//! reopened cursor, and applying more batches between pages (ingest while paging). The
//! concatenated pages must be in the query's order (`occurred_at`, then seq), hold no
//! event twice, hold every matching event that existed at the first page, and nothing
//! that does not match (events recorded while paging may or may not appear, as they
//! fall before or after the cursor); without ingest while paging they must equal the
//! model's answer exactly. Every event must be the queried tenant's, and a cursor of
//! another tenant or another filter must be refused.
//!
//! The node's indexer runs beside it with a short commit interval, so queries see any
//! mix of indexed events and unindexed tail; each case forces one access path (time
//! index, terms) or lets the planner choose: the results must not depend on it.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;
use tempfile::TempDir;
use trail_node::consensus::{Entry, LogId};
use trail_node::index::{IndexConfig, NodeIndex};
use trail_node::ledger::{ActorKind, EventRecord, LedgerCommand, Outcome};
use trail_node::query::cursor::{tenant_digest, Cursor, CursorKey};
use trail_node::query::{ActionMatch, Filters, Order};
use trail_node::shard::query::{self, AccessPath, Query};
use trail_node::storage::{NodeStore, ShardKeyspaces, StateMachine};

/// Tenants per case; each case gets fresh tenant names in the shared store.
const TENANTS_PER_CASE: usize = 3;
const ACTORS: [&str; 3] = ["usr_1", "usr_2", "svc_1"];
const ACTIONS: [&str; 6] = [
    "auth.login",
    "auth.logout",
    "auth.mfa.verify",
    "authz.check",
    "role.assign",
    "doc.view",
];
const PREFIXES: [&str; 4] = ["auth.", "authz.", "role.", "doc."];
const RESOURCE_TYPES: [&str; 2] = ["doc", "session"];
const RESOURCE_IDS: [&str; 3] = ["r1", "r2", "r3"];
const REQUEST_IDS: [&str; 3] = ["", "q1", "q2"];
/// occurred_at values are drawn from a small window, in no particular order.
const TIME_BASE_NS: i64 = 1_735_689_600_000_000_000;
const TIME_SLOTS: i64 = 20;

#[derive(Debug, Clone)]
struct Draw {
    /// Index into the case's tenants.
    tenant: usize,
    actor: usize,
    kind: u8,
    action: usize,
    resource_type: usize,
    resource_id: usize,
    outcome: u8,
    request_id: usize,
    time_slot: i64,
}

fn draw() -> impl Strategy<Value = Draw> {
    (
        0..TENANTS_PER_CASE,
        0..ACTORS.len(),
        1u8..=3,
        0..ACTIONS.len(),
        0..RESOURCE_TYPES.len(),
        0..RESOURCE_IDS.len(),
        1u8..=3,
        0..REQUEST_IDS.len(),
        0..TIME_SLOTS,
    )
        .prop_map(
            |(
                tenant,
                actor,
                kind,
                action,
                resource_type,
                resource_id,
                outcome,
                request_id,
                time_slot,
            )| Draw {
                tenant,
                actor,
                kind,
                action,
                resource_type,
                resource_id,
                outcome,
                request_id,
                time_slot,
            },
        )
}

static EVENT_IDS: AtomicU64 = AtomicU64::new(0);

fn record(tenant_id: &str, draw: &Draw) -> EventRecord {
    let number = EVENT_IDS.fetch_add(1, AtomicOrdering::Relaxed);
    EventRecord {
        event_id: format!("evt_{number}"),
        tenant_id: tenant_id.to_string(),
        actor_kind: ActorKind::from_u8(draw.kind).expect("1..=3"),
        actor_id: ACTORS[draw.actor].to_string(),
        actor_email: String::new(),
        actor_name: String::new(),
        action: ACTIONS[draw.action].to_string(),
        resource_type: RESOURCE_TYPES[draw.resource_type].to_string(),
        resource_id: RESOURCE_IDS[draw.resource_id].to_string(),
        outcome: Outcome::from_u8(draw.outcome).expect("1..=3"),
        occurred_at_ns: TIME_BASE_NS + draw.time_slot * 1_000_000_000,
        request_id: REQUEST_IDS[draw.request_id].to_string(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json: String::new(),
        subject_id: ACTORS[draw.actor].to_string(),
    }
}

#[derive(Debug, Clone)]
struct QueryCase {
    tenant: usize,
    filters: Filters,
    order: Order,
    page_size: usize,
    examined_max: u64,
    path: Option<AccessPath>,
}

fn filters() -> impl Strategy<Value = Filters> {
    let pick = |count: usize| proptest::option::weighted(0.3, 0..count);
    (
        (
            pick(ACTORS.len()),
            pick(3),
            pick(ACTIONS.len() + PREFIXES.len()),
        ),
        (
            pick(RESOURCE_TYPES.len()),
            pick(RESOURCE_IDS.len()),
            pick(3),
        ),
        pick(REQUEST_IDS.len() - 1),
        (
            proptest::option::weighted(0.3, 0..TIME_SLOTS),
            proptest::option::weighted(0.3, 1..=TIME_SLOTS),
        ),
    )
        .prop_map(
            |((actor, kind, action), (resource_type, resource_id, outcome), request, times)| {
                let (start, end) = match times {
                    (Some(start), Some(end)) if end <= start => (Some(end - 1), Some(start + 1)),
                    other => other,
                };
                Filters {
                    actor_id: actor.map(|index| ACTORS[index].to_string()),
                    actor_kind: kind.and_then(|kind| ActorKind::from_u8(kind as u8 + 1)),
                    action: action.map(|index| match ACTIONS.get(index) {
                        Some(action) => ActionMatch::Exact(action.to_string()),
                        None => ActionMatch::Prefix(PREFIXES[index - ACTIONS.len()].to_string()),
                    }),
                    resource_type: resource_type.map(|index| RESOURCE_TYPES[index].to_string()),
                    resource_id: resource_id.map(|index| RESOURCE_IDS[index].to_string()),
                    outcome: outcome.and_then(|outcome| Outcome::from_u8(outcome as u8 + 1)),
                    // Skip "" (no request id): as a filter it means "any".
                    request_id: request.map(|index| REQUEST_IDS[index + 1].to_string()),
                    start_time_ns: start.map(|slot| TIME_BASE_NS + slot * 1_000_000_000),
                    end_time_ns: end.map(|slot| TIME_BASE_NS + slot * 1_000_000_000),
                }
            },
        )
}

fn query_case() -> impl Strategy<Value = QueryCase> {
    (
        0..TENANTS_PER_CASE,
        filters(),
        any::<bool>(),
        prop_oneof![1usize..=4, 5usize..=60, Just(1_000usize)],
        prop_oneof![1u64..=7, Just(query::EXAMINED_PER_REQUEST_MAX)],
        prop_oneof![
            Just(None),
            Just(Some(AccessPath::TimeIndex)),
            Just(Some(AccessPath::Terms))
        ],
    )
        .prop_map(
            |(tenant, filters, newest_first, page_size, examined_max, path)| QueryCase {
                tenant,
                filters,
                order: if newest_first {
                    Order::NewestFirst
                } else {
                    Order::OldestFirst
                },
                page_size,
                examined_max,
                path,
            },
        )
}

/// A shard on a real fjall store, fed through the real state machine. Opening one
/// takes ~0.5 s, so the generated cases share one, each with tenants of its own.
struct Store {
    _dir: TempDir,
    keyspaces: ShardKeyspaces,
    state_machine: StateMachine,
    index: NodeIndex,
    runtime: tokio::runtime::Runtime,
    next_index: u64,
    cases: u64,
    /// The current case's tenants.
    tenants: Vec<String>,
    /// What was applied in this case, per tenant, in seq order: the model.
    applied: Vec<Vec<EventRecord>>,
}

thread_local! {
    static SHARED: std::cell::RefCell<Option<Store>> = const { std::cell::RefCell::new(None) };
}

/// Runs `work` on the thread's shared store, with fresh tenants.
fn with_shared_store<T>(work: impl FnOnce(&mut Store) -> T) -> T {
    SHARED.with(|shared| {
        let mut shared = shared.borrow_mut();
        let store = shared.get_or_insert_with(Store::open);
        store.begin_case();
        work(store)
    })
}

impl Store {
    fn open() -> Store {
        let dir = TempDir::new().expect("temporary directory");
        let store = NodeStore::open(dir.path()).expect("open node store");
        let keyspaces = store.shard(1).expect("open shard keyspaces");
        let state_machine =
            StateMachine::open(&store, &keyspaces, None).expect("open state machine");
        let mut config = IndexConfig::new(dir.path());
        config.commit_interval = std::time::Duration::from_millis(3);
        config.poll_interval = std::time::Duration::from_millis(1);
        // Every request id in one term: a request-id page or count reads past the other
        // requests' events, as it does in production once a bucket holds several.
        config.request_bucket_bits = 0;
        let index =
            NodeIndex::open(&store, std::slice::from_ref(&keyspaces), config).expect("open index");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut store = Store {
            _dir: dir,
            keyspaces,
            state_machine,
            index,
            runtime,
            next_index: 1,
            cases: 0,
            tenants: Vec::new(),
            applied: Vec::new(),
        };
        store.begin_case();
        store
    }

    fn begin_case(&mut self) {
        self.cases += 1;
        let case = self.cases;
        self.tenants = (0..TENANTS_PER_CASE)
            .map(|index| format!("ten_{case}_{index}"))
            .collect();
        self.applied = vec![Vec::new(); TENANTS_PER_CASE];
    }

    fn apply(&mut self, batch: &[Draw]) {
        if batch.is_empty() {
            return;
        }
        let events: Vec<EventRecord> = batch
            .iter()
            .map(|draw| record(&self.tenants[draw.tenant], draw))
            .collect();
        for (draw, event) in batch.iter().zip(&events) {
            self.applied[draw.tenant].push(event.clone());
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
        let responses = self
            .runtime
            .block_on(self.state_machine.apply(vec![entry]))
            .expect("apply");
        assert!(responses[0]
            .receipts
            .iter()
            .all(|receipt| !receipt.deduplicated));
    }

    /// The model's answer over the tenant's first `events_visible` events: those that
    /// match, in the query's order (`occurred_at`, then seq).
    fn expected(&self, case: &QueryCase, events_visible: usize) -> Vec<Got> {
        let mut expected: Vec<Got> = self.applied[case.tenant][..events_visible]
            .iter()
            .enumerate()
            .filter(|(_, event)| model_matches(&case.filters, event))
            .map(|(index, event)| Got {
                occurred_at_ns: event.occurred_at_ns,
                seq: index as u64 + 1,
                event_id: event.event_id.clone(),
            })
            .collect();
        expected.sort_by_key(|got| (got.occurred_at_ns, got.seq));
        if case.order == Order::NewestFirst {
            expected.reverse();
        }
        expected
    }

    /// Checks one query's pages against the model: in order, no repeats, everything
    /// that existed at the first page, nothing that never matched; exactly the model's
    /// answer when nothing was recorded while paging.
    fn check(&self, case: &QueryCase, got: &[Got], at_first: usize, at_last: usize) {
        let first = self.expected(case, at_first);
        let last = self.expected(case, at_last);
        if at_first == at_last {
            assert_eq!(got, &first[..], "case {case:?}");
            return;
        }
        let mut seen = std::collections::HashSet::new();
        for pair in got.windows(2) {
            let (a, b) = (
                (pair[0].occurred_at_ns, pair[0].seq),
                (pair[1].occurred_at_ns, pair[1].seq),
            );
            match case.order {
                Order::NewestFirst => assert!(a > b, "out of order: {case:?}"),
                Order::OldestFirst => assert!(a < b, "out of order: {case:?}"),
            }
        }
        for item in got {
            assert!(seen.insert(item.seq), "repeated seq {}: {case:?}", item.seq);
            assert!(last.contains(item), "{item:?} does not match: {case:?}");
        }
        for item in &first {
            assert!(seen.contains(&item.seq), "skipped {item:?}: {case:?}");
        }
    }
}

/// The filter semantics, written out independently of `Filters::matches`.
fn model_matches(filters: &Filters, event: &EventRecord) -> bool {
    let same = |wanted: &Option<String>, value: &String| match wanted {
        None => true,
        Some(wanted) => wanted == value,
    };
    let action_ok = match &filters.action {
        None => true,
        Some(ActionMatch::Exact(action)) => action == &event.action,
        // `auth.*`: the action's dotted segments begin with the prefix's, and go on.
        Some(ActionMatch::Prefix(prefix)) => {
            let wanted: Vec<&str> = prefix.trim_end_matches('.').split('.').collect();
            let segments: Vec<&str> = event.action.split('.').collect();
            segments.len() > wanted.len() && segments[..wanted.len()] == wanted[..]
        }
    };
    same(&filters.actor_id, &event.actor_id)
        && filters
            .actor_kind
            .is_none_or(|kind| kind == event.actor_kind)
        && action_ok
        && same(&filters.resource_type, &event.resource_type)
        && same(&filters.resource_id, &event.resource_id)
        && filters
            .outcome
            .is_none_or(|outcome| outcome == event.outcome)
        && same(&filters.request_id, &event.request_id)
        && filters
            .start_time_ns
            .is_none_or(|start| start <= event.occurred_at_ns)
        && filters
            .end_time_ns
            .is_none_or(|end| event.occurred_at_ns < end)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    occurred_at_ns: i64,
    seq: u64,
    event_id: String,
}

/// Pages through one query to its end, applying one batch of `during` after each page.
/// Returns what the pages held and how many of the tenant's events existed at the
/// first and at the last read.
fn page_through(
    store: &mut Store,
    key: &CursorKey,
    case: &QueryCase,
    during: &mut std::vec::IntoIter<Vec<Draw>>,
) -> (Vec<Got>, usize, usize) {
    let tenant = store.tenants[case.tenant].clone();
    let tenant = tenant.as_str();
    let digest = case.filters.digest(case.order);
    let mut cursor_text: Option<String> = None;
    let mut got = Vec::new();
    let visible_at_first_read = store.applied[case.tenant].len();
    let mut visible_at_last_read: usize;
    // Every request examines at least one event, so this many pages always suffice.
    let pages_max = 10_000;
    for _ in 0..pages_max {
        let after = cursor_text.as_ref().map(|text| {
            let cursor = key.open(text).expect("our own cursor opens");
            cursor
                .check_scope(&tenant_digest(tenant), &digest)
                .expect("our own cursor is in scope");
            // Isolation: the same cursor is refused for another tenant and another filter.
            let other_tenant = &store.tenants[(case.tenant + 1) % TENANTS_PER_CASE];
            assert!(cursor
                .check_scope(&tenant_digest(other_tenant), &digest)
                .is_err());
            let mut other_filters = case.filters.clone();
            other_filters.actor_id = Some("someone_else".into());
            assert!(cursor
                .check_scope(&tenant_digest(tenant), &other_filters.digest(case.order))
                .is_err());
            (cursor.occurred_at_ns, cursor.seq)
        });
        let mut query = Query::new(tenant, case.filters.clone(), case.page_size, case.order);
        query.after = after;
        query.examined_max = case.examined_max;
        query.path = case.path;
        visible_at_last_read = store.applied[case.tenant].len();
        let page = query::run(&store.keyspaces, &store.index, &query).expect("query runs");
        assert!(page.events.len() <= case.page_size);
        assert!(page.examined <= case.examined_max.max(case.page_size as u64 + 1));
        if page.next_after.is_some() && !page.partial {
            assert_eq!(
                page.events.len(),
                case.page_size,
                "a short page ends the query"
            );
        }
        for event in &page.events {
            assert_eq!(event.stored.event.tenant_id, tenant, "tenant isolation");
            assert_eq!(event.stored.stream, format!("{tenant}/0"));
            got.push(Got {
                occurred_at_ns: event.stored.event.occurred_at_ns,
                seq: event.stored.seq,
                event_id: event.stored.event.event_id.clone(),
            });
        }
        let Some((occurred_at_ns, seq)) = page.next_after else {
            return (got, visible_at_first_read, visible_at_last_read);
        };
        cursor_text = Some(key.seal(&Cursor {
            order: case.order,
            tenant_digest: tenant_digest(tenant),
            query_digest: digest,
            stream_index: 0,
            occurred_at_ns,
            seq,
        }));
        if let Some(batch) = during.next() {
            store.apply(&batch);
        }
    }
    panic!("query did not end within {pages_max} pages");
}

fn batches(max_events: usize) -> impl Strategy<Value = Vec<Vec<Draw>>> {
    proptest::collection::vec(proptest::collection::vec(draw(), 1..12), 0..max_events / 6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pages_equal_the_model(
        before in batches(150),
        during in batches(60),
        cases in proptest::collection::vec(query_case(), 1..8),
        caught_up in any::<bool>(),
    ) {
        with_shared_store(|store| {
            for batch in &before {
                store.apply(batch);
            }
            if caught_up {
                // The events before are read through the indexes (else mostly from
                // the tail, the indexer being a thread of its own).
                assert!(
                    store.index.wait_caught_up(
                        std::slice::from_ref(&store.keyspaces),
                        std::time::Duration::from_secs(10)
                    ),
                    "the indexer catches up"
                );
            }
            let key = CursorKey::from_bytes([42; 32]);
            let mut during = during.into_iter();
            for case in &cases {
                let (got, at_first, at_last) = page_through(store, &key, case, &mut during);
                store.check(case, &got, at_first, at_last);
                // Counts agree with the model too.
                let tenant = &store.tenants[case.tenant];
                let count = query::count(&store.keyspaces, &store.index, tenant, &case.filters)
                    .expect("count runs");
                let expected = store.expected(case, store.applied[case.tenant].len()).len();
                prop_assert_eq!(count, expected as u64, "count of {:?}", case);
            }
            Ok(())
        })?;
    }
}

/// A stream scanned with every page size from 1 to past its length, both orders,
/// gives the same events: no page size skips or repeats one.
#[test]
fn every_page_size_gives_the_same_result() {
    let mut store = Store::open();
    let draws: Vec<Draw> = (0..40)
        .map(|index| Draw {
            tenant: index % 2,
            actor: index % 3,
            kind: 1,
            action: index % ACTIONS.len(),
            resource_type: 0,
            resource_id: index % 3,
            outcome: 1 + (index % 3) as u8,
            request_id: 0,
            time_slot: (index as i64 * 7) % TIME_SLOTS,
        })
        .collect();
    store.apply(&draws[..25]);
    assert!(
        store.index.wait_caught_up(
            std::slice::from_ref(&store.keyspaces),
            std::time::Duration::from_secs(10)
        ),
        "the indexer catches up"
    );
    // Everything indexed: both paths answer from the indexes alone.
    for path in [AccessPath::TimeIndex, AccessPath::Terms] {
        let mut query = Query::new(
            &store.tenants[0],
            Filters::default(),
            100,
            Order::NewestFirst,
        );
        query.path = Some(path);
        let page = query::run(&store.keyspaces, &store.index, &query).unwrap();
        assert_eq!(page.tail_events, 0, "{path:?}");
        assert_eq!(page.events.len(), 13, "{path:?}");
    }
    store.apply(&draws[25..]);
    let key = CursorKey::from_bytes([7; 32]);
    for order in [Order::NewestFirst, Order::OldestFirst] {
        for examined_max in [1, 3, query::EXAMINED_PER_REQUEST_MAX] {
            for page_size in 1..=25 {
                let case = QueryCase {
                    tenant: 0,
                    filters: Filters {
                        action: Some(ActionMatch::Prefix("auth.".into())),
                        ..Filters::default()
                    },
                    order,
                    page_size,
                    examined_max,
                    path: None,
                };
                let (got, at_first, at_last) =
                    page_through(&mut store, &key, &case, &mut Vec::new().into_iter());
                store.check(&case, &got, at_first, at_last);
            }
        }
    }
}

/// A tenant that never recorded anything, and one whose events all live on this shard
/// beside others', see only their own (or nothing).
#[test]
fn unknown_tenant_reads_nothing() {
    let mut store = Store::open();
    store.apply(&[Draw {
        tenant: 0,
        actor: 0,
        kind: 1,
        action: 0,
        resource_type: 0,
        resource_id: 0,
        outcome: 1,
        request_id: 0,
        time_slot: 0,
    }]);
    let other = store.tenants[1].clone();
    for tenant in ["ten_nobody", other.as_str()] {
        let query = Query::new(tenant, Filters::default(), 50, Order::NewestFirst);
        let page = query::run(&store.keyspaces, &store.index, &query).unwrap();
        assert!(page.events.is_empty());
        assert_eq!(page.next_after, None);
        assert_eq!(page.examined, 0);
    }
}
