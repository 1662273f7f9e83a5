//! Queries through a real node: gRPC, REST and `trailctl query` agree, pages never skip
//! or repeat, tenants never see each other's events, and bad input is a clear 400.
//!
//! Steps: start a node; record 90 events of tenant `ten_a` (actors, actions and results
//! varied) and 30 of `ten_b`; page through several filters over gRPC with small pages
//! and compare with what was recorded; replay cursors across tenants and filters and
//! edit one (all refused, naming `cursor`); read the same query over REST
//! (`/api/v1/tenants/{tenant}/audit-logs`, hand-written HTTP/1.1 so the test needs no
//! HTTP client crate) and the single-event route; send each kind of bad REST input and
//! check the 400 names the parameter, and that the node still answers; finally run
//! `trailctl query` as a table, as JSON lines with `--all`, and with a refused cursor.

use std::collections::BTreeSet;

use serde_json::Value;
use tempfile::TempDir;
use trail_proto::v1::{self, QueryFilter, QueryOrder, QueryRequest};
use trail_tests::{event, Traild};

const ACTIONS: [&str; 5] = [
    "auth.login",
    "auth.mfa.verify",
    "authz.check",
    "document.view",
    "role.assign",
];

/// The recorded events of one tenant, in seq order: (event_id, actor, action, result).
type Recorded = Vec<(String, String, String, i32)>;

fn varied_event(tenant: &str, index: usize) -> v1::Event {
    let mut event = event(tenant, &format!("{tenant}-evt-{index:03}"));
    let actor = event.actor.as_mut().expect("helper sets an actor");
    actor.id = format!("usr_{}", index % 4);
    event.action = ACTIONS[index % ACTIONS.len()].to_string();
    event.result = match index % 7 {
        0 => v1::Result::Failure,
        3 => v1::Result::Denied,
        _ => v1::Result::Success,
    } as i32;
    event.request_id = format!("req_{}", index / 10);
    event
}

async fn record(node: &Traild, tenant: &str, count: usize) -> Recorded {
    let mut client = node.client().await.expect("connect");
    let events: Vec<v1::Event> = (0..count)
        .map(|index| varied_event(tenant, index))
        .collect();
    let response = client
        .record_batch(v1::RecordBatchRequest {
            events: events.clone(),
        })
        .await
        .expect("record batch")
        .into_inner();
    assert_eq!(response.accepted as usize, count, "{response:?}");
    events
        .into_iter()
        .map(|event| {
            let actor = event.actor.expect("set").id;
            (event.event_id, actor, event.action, event.result)
        })
        .collect()
}

fn filter_request(
    tenant: &str,
    filter: QueryFilter,
    limit: u32,
    order: QueryOrder,
) -> QueryRequest {
    QueryRequest {
        tenant_id: tenant.to_string(),
        filter: Some(filter),
        limit,
        cursor: String::new(),
        order: order as i32,
        ..QueryRequest::default()
    }
}

/// Every page of a gRPC query: the event ids in the order received.
async fn grpc_all(node: &Traild, mut request: QueryRequest) -> Vec<String> {
    let mut client = node.client().await.expect("connect");
    let mut ids = Vec::new();
    for _ in 0..1_000 {
        let page = client
            .query(request.clone())
            .await
            .expect("query")
            .into_inner();
        assert!(page.events.len() <= request.limit.max(1) as usize);
        for stored in &page.events {
            let event = stored.event.as_ref().expect("events are whole");
            assert_eq!(event.tenant_id, request.tenant_id, "tenant isolation");
            ids.push(event.event_id.clone());
        }
        if page.next_cursor.is_empty() {
            return ids;
        }
        request.cursor = page.next_cursor;
    }
    panic!("the query did not end");
}

fn expected(
    recorded: &Recorded,
    keep: impl Fn(&str, &str, i32) -> bool,
    newest_first: bool,
) -> Vec<String> {
    let mut ids: Vec<String> = recorded
        .iter()
        .filter(|(_, actor, action, result)| keep(actor, action, *result))
        .map(|(id, ..)| id.clone())
        .collect();
    if newest_first {
        ids.reverse();
    }
    ids
}

/// `GET path` over HTTP/1.1; the status and the JSON body.
fn http_get(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http_get_text(port, path);
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|error| panic!("GET {path}: body is not JSON ({error}): {body}"));
    (status, json)
}

/// `GET path` over HTTP/1.1 on loopback; the status and the body.
fn http_get_text(port: u16, path: &str) -> (u16, String) {
    let response = trail_tests::http_get("127.0.0.1", port, path);
    (response.status, response.body)
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Every page of a REST query.
fn rest_all(port: u16, tenant: &str, parameters: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let mut path = format!("/api/v1/tenants/{tenant}/audit-logs?{parameters}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={}", encode(cursor)));
        }
        let (status, body) = http_get(port, &path);
        assert_eq!(status, 200, "{path}: {body}");
        let events = body["events"].as_array().expect("events array");
        assert_eq!(body["count"].as_u64(), Some(events.len() as u64));
        for event in events {
            assert_eq!(event["tenant_id"], tenant, "tenant isolation");
            ids.push(event["event_id"].as_str().expect("event_id").to_string());
        }
        match &body["next_cursor"] {
            Value::Null => return ids,
            Value::String(next) => cursor = Some(next.clone()),
            other => panic!("next_cursor is {other}"),
        }
    }
    panic!("the REST query did not end");
}

fn assert_bad_request(port: u16, path: &str, parameter: &str) {
    let (status, body) = http_get(port, path);
    assert_eq!(status, 400, "{path}: {body}");
    assert_eq!(body["error"]["code"], "invalid_argument", "{path}: {body}");
    assert_eq!(body["error"]["parameter"], parameter, "{path}: {body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.starts_with(parameter), "{path}: {message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn query_through_grpc_rest_and_trailctl() {
    let dir = TempDir::new().expect("temporary directory");
    // Reads are not recorded here, so results hold only the test's events; the test
    // below covers the records.
    let node = Traild::start(dir.path(), &["--audit-reads", "false"]).await;
    let tenant_a = record(&node, "ten_a", 90).await;
    let _tenant_b = record(&node, "ten_b", 30).await;
    let cursor_key = dir.path().join("cursor.key");
    assert!(cursor_key.exists(), "the node keeps its cursor key");

    // gRPC: several filters, small pages, both orders.
    let failed_auth = QueryFilter {
        action: "auth.*".into(),
        result: v1::Result::Failure as i32,
        ..Default::default()
    };
    let is_auth = |action: &str| action.starts_with("auth.");
    let cases: Vec<(QueryFilter, Vec<String>, Vec<String>)> = vec![
        (
            QueryFilter::default(),
            expected(&tenant_a, |_, _, _| true, true),
            expected(&tenant_a, |_, _, _| true, false),
        ),
        (
            failed_auth.clone(),
            expected(
                &tenant_a,
                |_, action, result| is_auth(action) && result == v1::Result::Failure as i32,
                true,
            ),
            expected(
                &tenant_a,
                |_, action, result| is_auth(action) && result == v1::Result::Failure as i32,
                false,
            ),
        ),
        (
            QueryFilter {
                actor_id: "usr_2".into(),
                action: "authz.check".into(),
                ..Default::default()
            },
            expected(
                &tenant_a,
                |actor, action, _| actor == "usr_2" && action == "authz.check",
                true,
            ),
            expected(
                &tenant_a,
                |actor, action, _| actor == "usr_2" && action == "authz.check",
                false,
            ),
        ),
    ];
    for (filter, newest_first, oldest_first) in &cases {
        assert!(!newest_first.is_empty(), "{filter:?} matches something");
        for limit in [1, 7, 50, 1_000] {
            let newest = grpc_all(
                &node,
                filter_request("ten_a", filter.clone(), limit, QueryOrder::NewestFirst),
            )
            .await;
            assert_eq!(&newest, newest_first, "{filter:?} limit {limit}");
            let oldest = grpc_all(
                &node,
                filter_request("ten_a", filter.clone(), limit, QueryOrder::OldestFirst),
            )
            .await;
            assert_eq!(&oldest, oldest_first, "{filter:?} limit {limit}");
        }
    }
    // limit 0 is the default of 50 on gRPC.
    let mut client = node.client().await.expect("connect");
    let first_page = client
        .query(filter_request(
            "ten_a",
            QueryFilter::default(),
            0,
            QueryOrder::Unspecified,
        ))
        .await
        .expect("query")
        .into_inner();
    assert_eq!(first_page.events.len(), 50);
    assert_eq!(first_page.events[0].seq, 90);
    assert!(!first_page.next_cursor.is_empty());

    // Cursors continue only their own query.
    let b_page = client
        .query(filter_request(
            "ten_b",
            QueryFilter::default(),
            5,
            QueryOrder::NewestFirst,
        ))
        .await
        .expect("query")
        .into_inner();
    let foreign = QueryRequest {
        cursor: b_page.next_cursor.clone(),
        ..filter_request("ten_a", QueryFilter::default(), 5, QueryOrder::NewestFirst)
    };
    let refused = client.query(foreign).await.expect_err("foreign cursor");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("cursor: "),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("another tenant"),
        "{}",
        refused.message()
    );
    let other_filter = QueryRequest {
        cursor: first_page.next_cursor.clone(),
        ..filter_request("ten_a", failed_auth.clone(), 5, QueryOrder::NewestFirst)
    };
    let refused = client.query(other_filter).await.expect_err("other filter");
    assert!(
        refused.message().starts_with("cursor: "),
        "{}",
        refused.message()
    );
    let mut edited = first_page.next_cursor.clone().into_bytes();
    edited[40] = if edited[40] == b'A' { b'B' } else { b'A' };
    let edited = QueryRequest {
        cursor: String::from_utf8(edited).expect("ASCII"),
        ..filter_request("ten_a", QueryFilter::default(), 5, QueryOrder::NewestFirst)
    };
    let refused = client.query(edited).await.expect_err("edited cursor");
    assert!(
        refused.message().starts_with("cursor: "),
        "{}",
        refused.message()
    );
    let bad_filter = client
        .query(filter_request(
            "ten_a",
            QueryFilter {
                action: "Auth.*".into(),
                ..Default::default()
            },
            5,
            QueryOrder::NewestFirst,
        ))
        .await
        .expect_err("bad action");
    assert!(
        bad_filter.message().starts_with("filter.action: "),
        "{}",
        bad_filter.message()
    );

    // REST: the same answers, and the single-event route.
    let port = node.http_port;
    let rest_failed = rest_all(port, "ten_a", "action=auth.*&result=failure&limit=3");
    assert_eq!(rest_failed, cases[1].1);
    let rest_all_oldest = rest_all(port, "ten_a", "order=asc&limit=40&actor_id=&action=");
    assert_eq!(rest_all_oldest, cases[0].2);
    let (status, page) = http_get(port, "/api/v1/tenants/ten_a/audit-logs?limit=2");
    assert_eq!(status, 200);
    let newest = &page["events"][0];
    assert_eq!(newest["seq"], 90);
    assert_eq!(newest["stream"], "ten_a/0");
    assert_eq!(newest["actor"]["type"], "USER");
    assert!(newest["occurred_at"]
        .as_str()
        .is_some_and(|time| time.ends_with('Z') && time.len() == 30));
    let event_id = newest["event_id"].as_str().expect("event_id").to_string();
    let (status, single) = http_get(
        port,
        &format!("/api/v1/tenants/ten_a/audit-logs/{event_id}"),
    );
    assert_eq!(status, 200, "{single}");
    assert_eq!(single, *newest);
    // A single node is its shards' only replica: eventual reads answer the same.
    let (status, eventual) = http_get(
        port,
        &format!("/api/v1/tenants/ten_a/audit-logs/{event_id}?consistency=eventual"),
    );
    assert_eq!((status, &eventual), (200, newest), "{eventual}");
    assert_eq!(
        rest_all(
            port,
            "ten_a",
            "action=auth.*&result=failure&limit=3&consistency=Eventual"
        ),
        cases[1].1
    );
    let (status, missing) = http_get(port, "/api/v1/tenants/ten_a/audit-logs/no-such-event");
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["parameter"], "event_id");
    // Another tenant's event id is not found in this tenant.
    let (status, _) = http_get(
        port,
        &format!("/api/v1/tenants/ten_b/audit-logs/{event_id}"),
    );
    assert_eq!(status, 404);

    // REST: bad input is a 400 naming the parameter.
    let base = "/api/v1/tenants/ten_a/audit-logs";
    let b_cursor = encode(&b_page.next_cursor);
    for (query, parameter) in [
        ("actor=usr_1", "actor"),
        ("start_time=yesterday", "start_time"),
        ("end_time=2025-01-01", "end_time"),
        (
            "start_time=2025-01-02T00:00:00Z&end_time=2025-01-01T00:00:00Z",
            "end_time",
        ),
        ("limit=0", "limit"),
        ("limit=10000", "limit"),
        ("limit=many", "limit"),
        ("cursor=not-a-cursor", "cursor"),
        (&format!("cursor={b_cursor}"), "cursor"),
        ("order=sideways", "order"),
        ("result=ok", "result"),
        ("actor_type=robot", "actor_type"),
        ("action=auth*", "action"),
        ("limit=5&limit=6", "limit"),
        ("consistency=sometimes", "consistency"),
    ] {
        assert_bad_request(port, &format!("{base}?{query}"), parameter);
    }
    assert_bad_request(port, "/api/v1/tenants/bad%20tenant/audit-logs", "tenant");
    assert_bad_request(
        port,
        &format!("/api/v1/tenants/ten_a/audit-logs/{event_id}?verbose=1"),
        "verbose",
    );
    assert_bad_request(
        port,
        &format!("/api/v1/tenants/ten_a/audit-logs/{event_id}?consistency=weak"),
        "consistency",
    );
    assert_bad_request(port, &format!("{base}/count?consistency=1"), "consistency");
    let (status, body) = http_get(port, "/api/v1/nowhere");
    assert_eq!(status, 404, "{body}");
    // Operators see index lag and the storage engine's memory and journal.
    let (status, metrics) = http_get_text(port, "/metrics");
    assert_eq!(status, 200, "{metrics}");
    for name in [
        "trail_index_lag_ms{shard=",
        "trail_storage_memtable_bytes ",
        "trail_storage_journal_bytes ",
        "trail_storage_journals ",
        "trail_storage_flushes_pending ",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    // Nothing else was affected.
    assert_eq!(
        rest_all(port, "ten_a", "action=auth.*&result=failure"),
        cases[1].1
    );

    // trailctl query: a table, JSON lines of every page, a refused cursor.
    let endpoint = node.endpoint();
    let table = trail_tests::trailctl()
        .args(["--endpoint", &endpoint, "query", "--tenant", "ten_a"])
        .args(["--action", "auth.*", "--result", "failure", "--limit", "2"])
        .output()
        .expect("run trailctl query");
    assert!(table.status.success(), "{table:?}");
    let stdout = String::from_utf8_lossy(&table.stdout);
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header");
    for column in ["time", "actor", "action", "resource", "result", "seq"] {
        assert!(header.contains(column), "{header}");
    }
    assert_eq!(lines.count(), 2, "{stdout}");
    assert!(
        String::from_utf8_lossy(&table.stderr).contains("--cursor"),
        "the next page is offered: {table:?}"
    );

    let all = trail_tests::trailctl()
        .args(["--endpoint", &endpoint, "query", "--tenant", "ten_a"])
        .args(["--action", "auth.*", "--result", "FAILURE", "--limit", "2"])
        .args(["--all", "--json", "--quiet"])
        .output()
        .expect("run trailctl query --all");
    assert!(all.status.success(), "{all:?}");
    let ids: Vec<String> = String::from_utf8_lossy(&all.stdout)
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("JSON line");
            event["event_id"].as_str().expect("event_id").to_string()
        })
        .collect();
    assert_eq!(ids, cases[1].1);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "no event twice");

    let refused = trail_tests::trailctl()
        .args(["--endpoint", &endpoint, "query", "--tenant", "ten_a"])
        .args(["--cursor", &b_page.next_cursor])
        .output()
        .expect("run trailctl query --cursor");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("cursor"), "{stderr}");

    // The cursor key survives a restart: an open cursor still continues.
    let mut node = node;
    node.restart().await;
    let mut client = node.client().await.expect("connect");
    let continued = client
        .query(QueryRequest {
            cursor: first_page.next_cursor.clone(),
            ..filter_request("ten_a", QueryFilter::default(), 0, QueryOrder::Unspecified)
        })
        .await
        .expect("a cursor from before the restart")
        .into_inner();
    assert_eq!(continued.events.len(), 40);
    assert_eq!(continued.events[0].seq, 40);
    assert!(continued.next_cursor.is_empty());
}

/// Each query and count is recorded in the tenant's own log before it is answered:
/// who (the key as the actor, the declared actor beside it as `on_behalf_of`, the
/// peer), which filter, how many; other tenants' logs do not see it. Counts agree with the events a query returns.
#[tokio::test(flavor = "multi_thread")]
async fn reads_are_audited_and_counts_agree() {
    let dir = TempDir::new().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let tenant_a = record(&node, "ten_a", 40).await;
    let _tenant_b = record(&node, "ten_b", 10).await;
    let mut client = node.client().await.expect("connect");
    let is_auth = |action: &str| action.starts_with("auth.");

    let failed_auth = QueryFilter {
        action: "auth.*".into(),
        result: v1::Result::Failure as i32,
        ..Default::default()
    };
    let mut request = tonic::Request::new(filter_request(
        "ten_a",
        failed_auth.clone(),
        1_000,
        QueryOrder::NewestFirst,
    ));
    request
        .metadata_mut()
        .insert("x-trail-actor", "auditor@example.com".parse().unwrap());
    let page = client.query(request).await.expect("query").into_inner();
    let expected_failed = expected(
        &tenant_a,
        |_, action, result| is_auth(action) && result == v1::Result::Failure as i32,
        true,
    );
    assert_eq!(page.events.len(), expected_failed.len());
    let count = client
        .count(v1::CountRequest {
            tenant_id: "ten_a".into(),
            filter: Some(failed_auth.clone()),
            ..v1::CountRequest::default()
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(
        count as usize,
        expected_failed.len(),
        "count agrees with the query"
    );
    let (status, body) = http_get(
        node.http_port,
        "/api/v1/tenants/ten_a/audit-logs/count?action=auth.*&result=failure",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"].as_u64(), Some(count));

    // The records: one for the query, one per count.
    let records = client
        .query(filter_request(
            "ten_a",
            QueryFilter {
                action: "audit_log.read".into(),
                ..Default::default()
            },
            1_000,
            QueryOrder::OldestFirst,
        ))
        .await
        .expect("query the records")
        .into_inner()
        .events;
    assert_eq!(records.len(), 3, "{records:?}");
    let first = records[0].event.as_ref().expect("whole");
    let admin_key_id = trail_tests::key_id_of(trail_tests::TEST_ADMIN_TOKEN);
    let actor = first.actor.as_ref().expect("actor");
    assert_eq!(actor.id, admin_key_id, "the key is the actor");
    assert!(!actor.name.is_empty(), "the key's name is recorded");
    assert_eq!(
        first.resource.as_ref().expect("resource").r#type,
        "audit_log"
    );
    assert!(!first.ip_address.is_empty(), "the peer is recorded");
    let metadata: Value = serde_json::from_str(&first.metadata_json).expect("JSON metadata");
    assert_eq!(metadata["read"], "query");
    assert_eq!(
        metadata["on_behalf_of"], "auditor@example.com",
        "the declared actor is kept beside the key"
    );
    assert_eq!(metadata["filter"]["action"], "auth.*");
    assert_eq!(metadata["filter"]["result"], "failure");
    assert_eq!(
        metadata["first_page_events"].as_u64(),
        Some(expected_failed.len() as u64)
    );
    for record in &records[1..] {
        let event = record.event.as_ref().expect("whole");
        let metadata: Value = serde_json::from_str(&event.metadata_json).expect("JSON");
        assert_eq!(metadata["read"], "count");
        assert_eq!(metadata["counted"].as_u64(), Some(count));
    }
    let rest_record = records[2].event.as_ref().expect("whole");
    assert_eq!(
        rest_record.actor.as_ref().expect("actor").id,
        admin_key_id,
        "REST without x-trail-actor: the key"
    );
    let metadata: Value = serde_json::from_str(&rest_record.metadata_json).expect("JSON");
    assert!(
        metadata.get("on_behalf_of").is_none(),
        "no claim, no on_behalf_of: {metadata}"
    );
    // Tenant B's log records none of tenant A's reads.
    let b_records = client
        .count(v1::CountRequest {
            tenant_id: "ten_b".into(),
            filter: Some(QueryFilter {
                action: "audit_log.*".into(),
                ..Default::default()
            }),
            ..v1::CountRequest::default()
        })
        .await
        .expect("count")
        .into_inner()
        .count;
    assert_eq!(b_records, 0);
}
