//! Hostile input through gRPC and REST: each case is answered with its status and the
//! field (or REST parameter) it names, and the node stays up with bounded memory and
//! threads through all of them.
//!
//! Steps:
//! 1. start `traild`; record a few good events and take a query cursor of two tenants
//!    (the cursor cases tamper with them) and a receipt (the event-id reuse cases);
//! 2. run the table of cases: every event field broken in turn (each beside a good
//!    event, which must be recorded), whole-batch limits including ~32 MiB of empty
//!    events and bytes that are not protobuf, read arguments (oversized ids and
//!    cursors, bad time ranges and limits, tampered and foreign cursors, unknown
//!    tenants), Raft messages on the client port, and REST requests (bad path segments
//!    and parameters, traversal, unknown routes and methods, huge query strings and
//!    headers, bytes that are not HTTP); each is checked for its gRPC code or HTTP
//!    status and its field, and all mismatches are reported together;
//! 3. reindex twice at once: the second is refused or joins the first, and the index
//!    counts every good event afterwards;
//! 4. the unknown tenants that were read were not created; the good events sent beside
//!    the bad ones are stored; the process still runs and answers `Status`; its peak
//!    memory and thread count stayed under bounds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::bytes::Bytes;
use prost::Message;
use tonic::Code;
use trail_proto::raft::raft_transport_client::RaftTransportClient;
use trail_proto::raft::RaftRequest;
use trail_proto::v1;
use trail_tests::{event, grpc_raw, http_raw, process_usage, Traild};

/// The node's peak resident memory (VmHWM) through the whole run: the node's request
/// bytes in flight (256 MiB by default, `--inflight-request-mib`) plus what it holds
/// besides. Measured on a debug build: 32 MiB idle, 76 MiB after every case but the
/// concurrent 32 MiB batches, 304 MiB with them (eight held at once fill the budget;
/// the rest are refused RESOURCE_EXHAUSTED before they are buffered). A single 32 MiB
/// batch of empty events decoded before its events are counted takes several GB.
const PEAK_RSS_BYTES_MAX: u64 = 512 << 20;

/// The node's threads, sampled after each case: 20 idle, 23 at most measured. Hostile
/// requests must not pin threads.
const THREADS_MAX: u64 = 64;

/// How long one call may take before the case fails (the node must answer, not hang).
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The tenant of the good events sent beside the bad ones.
const GOOD: &str = "ten_good";

const BATCH: &str = "/trail.v1.Trail/RecordBatch";

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a case is sent.
enum Call {
    /// In a `RecordBatch` just before a good event: the case is the bad event's
    /// outcome, and the good event must be recorded.
    Event(v1::Event),
    /// `Record` (unary).
    Record(Option<v1::Event>),
    /// `RecordBatch` of these events (its status as a whole).
    Batch(Vec<v1::Event>),
    /// Raw request bytes to a gRPC method path.
    Raw(&'static str, Bytes),
    /// The same raw request this many times at once, each on its own connection: the
    /// answer that is not INVALID_ARGUMENT if any, else the first.
    RawAtOnce(&'static str, Bytes, usize),
    GetEvent(v1::GetEventRequest),
    GetProof(v1::GetProofRequest),
    GetCheckpoint(v1::GetCheckpointRequest),
    GetBlock(v1::GetBlockRequest),
    ConsistencyProof(v1::GetConsistencyProofRequest),
    ListStreams(v1::ListStreamsRequest),
    Query(v1::QueryRequest),
    /// `Query` with gRPC metadata (name, value).
    QueryWith(v1::QueryRequest, &'static str, String),
    Count(v1::CountRequest),
    Tail(v1::TailRequest),
    Export(v1::RecordExportRequest),
    /// A `trail.raft.v1.RaftTransport` method ("vote", "append", "snapshot").
    Raft(&'static str),
    /// Raw bytes to the REST port.
    Http(Vec<u8>),
    /// Raw bytes to the gRPC port (HTTP/2 only): answered as [`Call::Http`] is.
    GrpcPortBytes(Vec<u8>),
}

/// What a case must be answered.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// The call succeeds.
    Ok,
    /// A gRPC status; with a field, the message starts with `<field>:`.
    Grpc(Code, Option<&'static str>),
    /// Either of two answers.
    Either(Box<Expect>, Box<Expect>),
    /// The event's outcome in its batch: an error with this code and field.
    EventError(&'static str, &'static str),
    /// The event's outcome: a deduplicated receipt with this seq and leaf hash.
    Deduplicated(u64, Vec<u8>),
    /// An HTTP status (0: no HTTP/1 answer, the connection closed); with a parameter,
    /// the JSON error names it.
    Http(u16, Option<&'static str>),
}

struct Case {
    name: String,
    send: Call,
    expect: Expect,
    /// Text the answer's message must hold besides the field.
    says: Vec<String>,
}

fn case(name: impl Into<String>, send: Call, expect: Expect) -> Case {
    Case {
        name: name.into(),
        send,
        expect,
        says: Vec::new(),
    }
}

impl Case {
    fn saying(mut self, text: impl Into<String>) -> Case {
        self.says.push(text.into());
        self
    }
}

/// What a case was answered, normalized.
#[derive(Debug)]
enum Got {
    Ok,
    Grpc(Code, String),
    EventError(String, String, String),
    Receipt(v1::Receipt),
    Http(u16, Option<String>, String),
    /// The good event sent beside a bad one was not recorded.
    GoodRefused(String),
}

fn invalid(field: &'static str) -> Expect {
    Expect::EventError("INVALID_ARGUMENT", field)
}

fn bad_arg(field: &'static str) -> Expect {
    Expect::Grpc(Code::InvalidArgument, Some(field))
}

fn rest(status: u16, parameter: Option<&'static str>) -> Expect {
    Expect::Http(status, parameter)
}

fn with(mut base: v1::Event, change: impl FnOnce(&mut v1::Event)) -> v1::Event {
    change(&mut base);
    base
}

fn bad(change: impl FnOnce(&mut v1::Event)) -> Call {
    Call::Event(with(event(GOOD, "bad-event"), change))
}

fn actor(event: &mut v1::Event) -> &mut v1::Actor {
    event.actor.as_mut().expect("an actor")
}

fn resource(event: &mut v1::Event) -> &mut v1::Resource {
    event.resource.as_mut().expect("a resource")
}

fn metadata(json: &str) -> Call {
    bad(|e| e.metadata_json = json.to_string())
}

fn grpc(code: Code) -> Expect {
    Expect::Grpc(code, None)
}

fn get_event_request(tenant: &str, event_id: &str) -> v1::GetEventRequest {
    v1::GetEventRequest {
        tenant_id: tenant.into(),
        event_id: event_id.into(),
        ..v1::GetEventRequest::default()
    }
}

fn get_event(tenant: &str, event_id: &str) -> Call {
    Call::GetEvent(get_event_request(tenant, event_id))
}

fn proof(tenant: &str, event_id: &str, tree_size: u64) -> Call {
    Call::GetProof(v1::GetProofRequest {
        tenant_id: tenant.into(),
        event_id: event_id.into(),
        tree_size,
    })
}

fn checkpoint(tenant: &str, stream_index: u32) -> Call {
    Call::GetCheckpoint(v1::GetCheckpointRequest {
        tenant_id: tenant.into(),
        stream_index,
        seal_now: true,
        ..v1::GetCheckpointRequest::default()
    })
}

fn list_streams(after_tenant_id: &str, limit: u32) -> Call {
    Call::ListStreams(v1::ListStreamsRequest {
        after_tenant_id: after_tenant_id.into(),
        limit,
    })
}

/// A query of the good tenant, changed.
fn query_as(change: impl FnOnce(&mut v1::QueryRequest)) -> Call {
    let mut request = query(GOOD);
    change(&mut request);
    Call::Query(request)
}

/// A query of the good tenant with a filter.
fn query_where(change: impl FnOnce(&mut v1::QueryFilter)) -> Call {
    let mut filter = v1::QueryFilter::default();
    change(&mut filter);
    query_as(|query| query.filter = Some(filter))
}

fn tail(tenant: &str, change: impl FnOnce(&mut v1::TailRequest)) -> Call {
    let mut request = v1::TailRequest {
        tenant_id: tenant.into(),
        ..v1::TailRequest::default()
    };
    change(&mut request);
    Call::Tail(request)
}

/// An HTTP/1.1 request of any bytes: `headers` are whole lines (each ending in CRLF);
/// a body gets its Content-Length.
fn http(method: &str, path: &[u8], headers: &[u8], body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} ").into_bytes();
    bytes.extend_from_slice(path);
    bytes.extend_from_slice(b" HTTP/1.1\r\nHost: trail\r\nConnection: close\r\n");
    bytes.extend_from_slice(headers);
    if !body.is_empty() {
        bytes.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(body);
    bytes
}

fn get(path: &str) -> Vec<u8> {
    http("GET", path.as_bytes(), b"", b"")
}

fn get_rest(path: &str) -> Call {
    Call::Http(get(path))
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

fn query(tenant: &str) -> v1::QueryRequest {
    v1::QueryRequest {
        tenant_id: tenant.into(),
        ..v1::QueryRequest::default()
    }
}

fn timed<T>(mut request: tonic::Request<T>) -> tonic::Request<T> {
    request.set_timeout(CALL_TIMEOUT);
    request
}

fn req<T>(message: T) -> tonic::Request<T> {
    timed(tonic::Request::new(message))
}

/// A query cursor of `tenant` (its first page of one event).
async fn cursor_of(node: &Traild, tenant: &str) -> String {
    let mut client = node.client().await.expect("connect");
    let page = client
        .query(req(v1::QueryRequest {
            limit: 1,
            ..query(tenant)
        }))
        .await
        .expect("query")
        .into_inner();
    assert!(!page.next_cursor.is_empty(), "{tenant} has a second page");
    page.next_cursor
}

/// The same cursor with one character changed (still base64-ish, no longer authentic).
fn tampered(cursor: &str) -> String {
    let mut bytes = cursor.as_bytes().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ASCII cursor")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_by_field_and_the_node_stays_up_with_bounded_memory() {
    let started = std::time::Instant::now();
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let pid = node.pid().expect("running");
    let (idle_rss, _, idle_threads) = process_usage(pid);
    let mut client = node.client().await.expect("connect");
    let now = now_seconds();

    // Step 1: what the cursor and id-reuse cases build on.
    let mut good_ids: Vec<String> = Vec::new();
    let seed: Vec<v1::Event> = (0..3)
        .flat_map(|index| {
            [
                event(GOOD, &format!("seed-{index}")),
                event("ten_other", &format!("seed-{index}")),
            ]
        })
        .collect();
    let seeded = client
        .record_batch(req(v1::RecordBatchRequest {
            events: seed.clone(),
        }))
        .await
        .expect("seed events")
        .into_inner();
    assert_eq!(seeded.accepted, 6, "{seeded:?}");
    good_ids.extend((0..3).map(|index| format!("seed-{index}")));
    let first = seeded.outcomes[0].outcome.clone();
    let Some(v1::record_outcome::Outcome::Receipt(first)) = first else {
        panic!("seed-0 has a receipt: {first:?}");
    };
    let good_cursor = cursor_of(&node, GOOD).await;
    let other_cursor = cursor_of(&node, "ten_other").await;
    // A checkpoint covering the seed events (the proof cases ask past it).
    client
        .get_checkpoint(req(v1::GetCheckpointRequest {
            tenant_id: GOOD.into(),
            seal_now: true,
            ..v1::GetCheckpointRequest::default()
        }))
        .await
        .expect("seal a checkpoint");

    // Step 2: the cases.
    let long = |bytes: usize| "a".repeat(bytes);
    let huge_id = long(100_000);
    let deep = format!("{}1{}", r#"{"a":"#.repeat(9), "}".repeat(9));
    let empty_events_32mib = Bytes::from([0x0a, 0x00].repeat((32 << 20) / 2 - 8));
    let over_32mib = Bytes::from(vec![0x0a; 33 << 20]);
    // Field 1 (events) holding one Event whose field 2 (tenant_id) is not UTF-8.
    let not_utf8 = Bytes::from_static(&[0x0a, 0x04, 0x12, 0x02, 0xff, 0xfe]);
    // Field 1 with a length past the end of the message.
    let truncated = Bytes::from_static(&[0x0a, 0x7f, 0x12, 0x02]);
    let garbage = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    let get_event_huge_id = Bytes::from(
        v1::GetEventRequest {
            tenant_id: GOOD.into(),
            event_id: huge_id.clone(),
            ..v1::GetEventRequest::default()
        }
        .encode_to_vec(),
    );
    let listing = "/api/v1/tenants/ten_good/audit-logs";
    let many_headers: String = (0..500).map(|i| format!("X-H{i}: v\r\n")).collect();
    let one_mb_metadata = format!(r#"{{"blob":"{}"}}"#, long(1 << 20));

    // One case per line: name, how it is sent, what it must be answered.
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // -- Ingest: every field, one at a time, beside a good event.
        case("tenant_id with a space", bad(|e| e.tenant_id = "ten a".into()), invalid("tenant_id")),
        case("tenant_id of 65 bytes", bad(|e| e.tenant_id = long(65)), invalid("tenant_id")),
        case("tenant_id path traversal", bad(|e| e.tenant_id = "../../etc/passwd".into()), invalid("tenant_id")),
        case("tenant_id empty", bad(|e| e.tenant_id.clear()), invalid("tenant_id")),
        case("tenant_id with U+200B", bad(|e| e.tenant_id = "ten\u{200B}good".into()), invalid("tenant_id")),
        case("event_id of 129 bytes", bad(|e| e.event_id = long(129)), invalid("event_id")),
        case("event_id with a space", bad(|e| e.event_id = "evt 1".into()), invalid("event_id")),
        case("event_id with a newline", bad(|e| e.event_id = "evt\n1".into()), invalid("event_id")),
        case("event_id with U+202E", bad(|e| e.event_id = "evt\u{202E}1".into()), invalid("event_id")),
        case("actor missing", bad(|e| e.actor = None), invalid("actor")),
        case("actor.type unknown", bad(|e| actor(e).r#type = 99), invalid("actor.type")),
        case("actor.type unspecified", bad(|e| actor(e).r#type = 0), invalid("actor.type")),
        case("actor.id empty", bad(|e| actor(e).id.clear()), invalid("actor.id")),
        case("actor.id of 257 bytes", bad(|e| actor(e).id = long(257)), invalid("actor.id")),
        case("actor.id with U+202E", bad(|e| actor(e).id = "usr_\u{202E}nimda".into()), invalid("actor.id")),
        case("actor.email of 321 bytes", bad(|e| actor(e).email = long(321)), invalid("actor.email")),
        case("actor.name with U+2066", bad(|e| actor(e).name = "Ada\u{2066}".into()), invalid("actor.name")),
        case("action empty", bad(|e| e.action.clear()), invalid("action")),
        case("action not dotted lower case", bad(|e| e.action = "Auth Login!".into()), invalid("action")),
        case("action with U+200B", bad(|e| e.action = "auth.\u{200B}login".into()), invalid("action")),
        case("action with U+FEFF", bad(|e| e.action = "\u{FEFF}auth.login".into()), invalid("action")),
        case("resource.type missing", bad(|e| resource(e).r#type.clear()), invalid("resource.type")),
        case("resource.id with U+FEFF", bad(|e| resource(e).id = "\u{FEFF}ses_1".into()), invalid("resource.id")),
        case("result unknown", bad(|e| e.result = 17), invalid("result")),
        case("result unspecified", bad(|e| e.result = 0), invalid("result")),
        case("occurred_at missing", bad(|e| e.occurred_at = None), invalid("occurred_at")),
        case("occurred_at a day ahead", bad(|e| e.occurred_at = at(now + 86_400, 0)), invalid("occurred_at")),
        case("occurred_at in 1999", bad(|e| e.occurred_at = at(946_684_799, 0)), invalid("occurred_at")),
        case("occurred_at nanos 1e9", bad(|e| e.occurred_at = at(now, 1_000_000_000)), invalid("occurred_at")),
        case("occurred_at nanos negative", bad(|e| e.occurred_at = at(now, -1)), invalid("occurred_at")),
        case("occurred_at at i64::MAX seconds", bad(|e| e.occurred_at = at(i64::MAX, 0)), invalid("occurred_at")),
        case("request_id with U+2066", bad(|e| e.request_id = "req_\u{2066}1".into()), invalid("request_id")),
        case("session_id of 257 bytes", bad(|e| e.session_id = long(257)), invalid("session_id")),
        case("ip_address not an address", bad(|e| e.ip_address = "999.1.1.1".into()), invalid("ip_address")),
        case("user_agent of 1025 bytes", bad(|e| e.user_agent = long(1025)), invalid("user_agent")),
        case("metadata_json not JSON", metadata("not json"), invalid("metadata_json")),
        case("metadata_json NaN", metadata(r#"{"n":NaN}"#), invalid("metadata_json")),
        case("metadata_json an array", metadata("[1,2]"), invalid("metadata_json")),
        case("metadata_json a string", metadata(r#""text""#), invalid("metadata_json")),
        case("metadata_json nine levels deep", metadata(&deep), invalid("metadata_json")),
        case("metadata_json of 9 KiB", metadata(&format!(r#"{{"b":"{}"}}"#, long(9 << 10))), invalid("metadata_json")),
        case("metadata_json duplicate keys", metadata(r#"{"a":1,"a":2}"#), invalid("metadata_json")).saying("twice"),
        case("metadata_json lone surrogate", metadata(r#"{"k":"\ud800"}"#), invalid("metadata_json")).saying("surrogate"),
        case("metadata_json number 1e400", metadata(r#"{"n":1e400}"#), invalid("metadata_json")).saying("out of range"),
        case("metadata_json trailing bytes", metadata(r#"{"a":1} x"#), invalid("metadata_json")),
        // -- The same event id again: with another body it is refused, naming the first
        //    record; with the same body it is a retry.
        case("seed-0 again with another body", Call::Event(with(seed[0].clone(), |e| e.action = "auth.logout".into())),
             Expect::EventError("ALREADY_EXISTS", "event_id"))
            .saying(format!("seq {}", first.seq))
            .saying(hex::encode(&first.leaf_hash)),
        case("seed-0 again, the same body", Call::Event(seed[0].clone()), Expect::Deduplicated(first.seq, first.leaf_hash.clone())),
        // -- Record (unary).
        case("Record without an event", Call::Record(None), bad_arg("event")),
        case("Record with 1 MB of metadata", Call::Record(Some(with(event(GOOD, "huge"), |e| e.metadata_json = one_mb_metadata))),
             bad_arg("metadata_json")),
        case("Record with a traversal tenant", Call::Record(Some(event("..", "x"))), bad_arg("tenant_id")),
        // -- Whole batches, and bytes that are not the message they claim to be.
        case("empty batch", Call::Batch(Vec::new()), bad_arg("events")),
        case("10,001 events", Call::Batch((0..10_001).map(|i| event(GOOD, &format!("many-{i}"))).collect()), bad_arg("events")),
        case("~32 MiB of empty events", Call::Raw(BATCH, empty_events_32mib.clone()), bad_arg("events")),
        case("16 x ~32 MiB of empty events at once", Call::RawAtOnce(BATCH, empty_events_32mib, 16),
             Expect::Either(Box::new(bad_arg("events")), Box::new(grpc(Code::ResourceExhausted)))),
        case("33 MiB message", Call::Raw(BATCH, over_32mib), grpc(Code::ResourceExhausted)),
        case("batch with a non-UTF-8 tenant_id", Call::Raw(BATCH, not_utf8), grpc(Code::InvalidArgument)),
        case("batch cut short", Call::Raw(BATCH, truncated.clone()), grpc(Code::InvalidArgument)),
        case("batch of garbage bytes", Call::Raw(BATCH, garbage.clone()), grpc(Code::InvalidArgument)),
        case("GetEvent of garbage bytes", Call::Raw("/trail.v1.Trail/GetEvent", garbage), grpc(Code::InvalidArgument)),
        case("Query cut short", Call::Raw("/trail.v1.Trail/Query", truncated), grpc(Code::InvalidArgument)),
        case("raw GetEvent with a 100 KB id", Call::Raw("/trail.v1.Trail/GetEvent", get_event_huge_id), bad_arg("event_id")),
        case("unknown method", Call::Raw("/trail.v1.Trail/DropEverything", Bytes::new()), grpc(Code::Unimplemented)),
        case("unknown service", Call::Raw("/trail.admin.v1.Admin/Shutdown", Bytes::new()), grpc(Code::Unimplemented)),
        // -- Read arguments.
        case("GetEvent with an empty id", get_event(GOOD, ""), bad_arg("event_id")),
        case("GetEvent with a 100 KB id", get_event(GOOD, &huge_id), bad_arg("event_id")),
        case("GetEvent with U+202E in the id", get_event(GOOD, "seed\u{202E}-0"), bad_arg("event_id")),
        case("GetEvent of a bad tenant", get_event("../x", "seed-0"), bad_arg("tenant_id")),
        case("GetEvent with consistency 9", Call::GetEvent(v1::GetEventRequest { consistency: 9, ..get_event_request(GOOD, "seed-0") }),
             bad_arg("consistency")),
        case("GetEvent of an unknown tenant", get_event("ten_ghost_1", "seed-0"), Expect::Grpc(Code::NotFound, Some("event_id"))),
        case("GetProof with a 100 KB id", proof(GOOD, &huge_id, 0), bad_arg("event_id")),
        case("GetProof with an empty id", proof(GOOD, "", 0), bad_arg("event_id")),
        case("GetProof of a bad tenant", proof(&long(1000), "seed-0", 0), bad_arg("tenant_id")),
        case("GetProof of an unknown tenant", proof("ten_ghost_2", "seed-0", 0), grpc(Code::NotFound)),
        case("GetProof at tree size u64::MAX", proof(GOOD, "seed-0", u64::MAX), grpc(Code::NotFound)),
        case("GetCheckpoint of a bad tenant", checkpoint("ten/../x", 0), bad_arg("tenant_id")),
        case("GetCheckpoint of an unknown tenant", checkpoint("ten_ghost_3", 0), grpc(Code::NotFound)),
        case("GetCheckpoint of stream u32::MAX", checkpoint(GOOD, u32::MAX), grpc(Code::NotFound)),
        case("GetBlock u64::MAX", Call::GetBlock(v1::GetBlockRequest { tenant_id: GOOD.into(), block_index: u64::MAX, ..Default::default() }),
             grpc(Code::NotFound)),
        case("consistency proof from a larger size",
             Call::ConsistencyProof(v1::GetConsistencyProofRequest { tenant_id: GOOD.into(), from_size: u64::MAX, ..Default::default() }),
             bad_arg("from_size")),
        case("ListStreams after a 100 KB tenant", list_streams(&huge_id, 0), bad_arg("after_tenant_id")),
        case("ListStreams after a traversal", list_streams("../../etc", 0), bad_arg("after_tenant_id")),
        case("ListStreams limit 10,001", list_streams("", 10_001), bad_arg("limit")),
        case("Query end before start", query_where(|f| { f.start_time = at(now, 0); f.end_time = at(now - 60, 0) }), bad_arg("filter.end_time")),
        case("Query start nanos out of range", query_where(|f| f.start_time = at(now, -5)), bad_arg("filter.start_time")),
        case("Query end at i64::MAX seconds", query_where(|f| f.end_time = at(i64::MAX, 0)), bad_arg("filter.end_time")),
        case("Query actor_id of 100 KB", query_where(|f| f.actor_id = huge_id.clone()), bad_arg("filter.actor_id")),
        case("Query action not an action", query_where(|f| f.action = "auth.**".into()), bad_arg("filter.action")),
        case("Query limit 0 (the default)", query_as(|q| q.limit = 0), Expect::Ok),
        case("Query limit u32::MAX", query_as(|q| q.limit = u32::MAX), bad_arg("limit")),
        case("Query order 7", query_as(|q| q.order = 7), bad_arg("order")),
        case("Query garbled cursor", query_as(|q| q.cursor = "not-a-cursor".into()), bad_arg("cursor")),
        case("Query 100 KB cursor", query_as(|q| q.cursor = huge_id.clone()), bad_arg("cursor")),
        case("Query tampered cursor", query_as(|q| q.cursor = tampered(&good_cursor)), bad_arg("cursor")),
        case("Query another tenant's cursor", query_as(|q| q.cursor = other_cursor.clone()), bad_arg("cursor")),
        case("Query the cursor with another order",
             query_as(|q| { q.cursor = good_cursor.clone(); q.order = v1::QueryOrder::OldestFirst as i32 }), bad_arg("cursor")),
        case("Query of a bad tenant", query_as(|q| q.tenant_id = "ten\u{202E}x".into()), bad_arg("tenant_id")),
        case("Query of an unknown tenant", query_as(|q| q.tenant_id = "ten_ghost_4".into()), Expect::Ok),
        case("Query with a 10 KB actor header", Call::QueryWith(query(GOOD), "x-trail-actor", long(10_000)), Expect::Ok),
        case("Count result 9",
             Call::Count(v1::CountRequest { tenant_id: GOOD.into(), filter: Some(v1::QueryFilter { result: 9, ..Default::default() }), consistency: 0 }),
             bad_arg("filter.result")),
        case("Count of an unknown tenant", Call::Count(v1::CountRequest { tenant_id: "ten_ghost_5".into(), ..Default::default() }), Expect::Ok),
        case("Tail of a bad tenant", tail("ten a", |_| {}), bad_arg("tenant_id")),
        case("Tail limit 5,000", tail(GOOD, |t| t.limit = 5_000), bad_arg("limit")),
        case("Tail of another tenant's stream", tail(GOOD, |t| t.stream = "ten_other/0".into()), bad_arg("stream")),
        case("Tail of an unknown tenant", tail("ten_ghost_6", |t| t.after_seq = u64::MAX), Expect::Ok),
        case("RecordExport format of 1 KB", Call::Export(v1::RecordExportRequest { tenant_id: GOOD.into(), filter: None, format: long(1000) }),
             bad_arg("format")),
        // -- The gRPC port spoken to in anything but HTTP/2: the connection is closed.
        case("gRPC port: an HTTP/1.1 request", Call::GrpcPortBytes(get(listing)), rest(0, None)),
        case("gRPC port: a bad HTTP/2 frame", Call::GrpcPortBytes([H2_PREFACE, &[0xff; 9]].concat()), rest(0, None)),
        // -- Raft on the client port: a single node serves none.
        case("Raft Vote", Call::Raft("vote"), grpc(Code::Unimplemented)),
        case("Raft AppendEntries", Call::Raft("append"), grpc(Code::Unimplemented)),
        case("Raft InstallSnapshot", Call::Raft("snapshot"), grpc(Code::Unimplemented)),
        // -- REST: path segments, parameters, methods, sizes, bytes that are not HTTP.
        case("REST tenant with a space", get_rest("/api/v1/tenants/ten%20a/audit-logs"), rest(400, Some("tenant"))),
        case("REST percent-encoded traversal", get_rest("/api/v1/tenants/..%2F..%2Fetc/audit-logs"), rest(400, Some("tenant"))),
        case("REST tenant %2E%2E", get_rest("/api/v1/tenants/%2E%2E/audit-logs"), rest(400, Some("tenant"))),
        case("REST tenant not UTF-8 (%FF%FE)", get_rest("/api/v1/tenants/%FF%FE/audit-logs"), rest(400, Some("tenant"))),
        case("REST tenant with U+202E", get_rest("/api/v1/tenants/ten%E2%80%AEx/audit-logs"), rest(400, Some("tenant"))),
        case("REST raw bytes not UTF-8 in the path", Call::Http(http("GET", b"/api/v1/tenants/\xff\xfe/audit-logs", b"", b"")), rest(400, None)),
        case("REST result=ok", get_rest(&format!("{listing}?result=ok")), rest(400, Some("result"))),
        case("REST start_time=yesterday", get_rest(&format!("{listing}?start_time=yesterday")), rest(400, Some("start_time"))),
        case("REST end before start", get_rest(&format!("{listing}?start_time=2025-01-02T00:00:00Z&end_time=2025-01-01T00:00:00Z")),
             rest(400, Some("end_time"))),
        case("REST limit=abc", get_rest(&format!("{listing}?limit=abc")), rest(400, Some("limit"))),
        case("REST limit=0", get_rest(&format!("{listing}?limit=0")), rest(400, Some("limit"))),
        case("REST limit given twice", get_rest(&format!("{listing}?limit=1&limit=2")), rest(400, Some("limit"))),
        case("REST unknown parameter", get_rest(&format!("{listing}?drop=1")), rest(400, Some("drop"))),
        case("REST count with limit", get_rest(&format!("{listing}/count?limit=5")), rest(400, Some("limit"))),
        case("REST tampered cursor", get_rest(&format!("{listing}?cursor={}", tampered(&good_cursor))), rest(400, Some("cursor"))),
        case("REST another tenant's cursor", get_rest(&format!("{listing}?cursor={other_cursor}")), rest(400, Some("cursor"))),
        case("REST actor_id of 10 KB", get_rest(&format!("{listing}?actor_id={}", long(10_000))), rest(400, Some("actor_id"))),
        case("REST query string of 100 KB", get_rest(&format!("{listing}?actor_id={}", long(100_000))), rest(400, None)),
        case("REST query string of 2 MB", get_rest(&format!("{listing}?actor_id={}", long(2 << 20))), rest(431, None)),
        case("REST event id of 10 KB", get_rest(&format!("{listing}/{}", long(10_000))), rest(400, Some("event_id"))),
        case("REST event id ../../etc/passwd", get_rest(&format!("{listing}/..%2F..%2Fetc%2Fpasswd")), rest(404, Some("event_id"))),
        case("REST unknown API path", get_rest("/api/v1/tenants"), rest(404, None)),
        case("REST unknown path", get_rest("/admin/shutdown"), rest(404, None)),
        case("REST POST", Call::Http(http("POST", listing.as_bytes(), b"", b"{}")), rest(405, None)),
        case("REST PUT", Call::Http(http("PUT", format!("{listing}/seed-0").as_bytes(), b"", b"{}")), rest(405, None)),
        case("REST DELETE", Call::Http(http("DELETE", format!("{listing}/seed-0").as_bytes(), b"", b"")), rest(405, None)),
        case("REST body on GET (ignored)", Call::Http(http("GET", listing.as_bytes(), b"", br#"{"x":1}"#)), rest(200, None)),
        case("REST header of 1 MiB", Call::Http(http("GET", listing.as_bytes(), format!("X-Long: {}\r\n", long(1 << 20)).as_bytes(), b"")),
             rest(431, None)),
        case("REST 500 headers", Call::Http(http("GET", listing.as_bytes(), many_headers.as_bytes(), b"")), rest(431, None)),
        case("REST actor header not ASCII (ignored)", Call::Http(http("GET", listing.as_bytes(), "x-trail-actor: usr_\u{202E}nimda\r\n".as_bytes(), b"")),
             rest(200, None)),
        case("REST NUL in a header value", Call::Http(http("GET", listing.as_bytes(), b"X-V: a\0b\r\n", b"")), rest(400, None)),
        case("REST not HTTP (a TLS hello)", Call::Http(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec()), rest(400, None)),
        case("REST HTTP/9.9", Call::Http(format!("GET {listing} HTTP/9.9\r\nHost: trail\r\n\r\n").into_bytes()), rest(400, None)),
        case("REST unknown tenant (read, not created)", get_rest("/api/v1/tenants/ten_ghost_7/audit-logs"), rest(200, None)),
        case("REST event of an unknown tenant", get_rest("/api/v1/tenants/ten_ghost_8/audit-logs/seed-0"), rest(404, Some("event_id"))),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());

    let mut failures: Vec<String> = Vec::new();
    let mut peak_threads = idle_threads;
    let mut good_index = 0usize;
    let case_count = cases.len();
    for case in cases {
        let case_started = std::time::Instant::now();
        let got = match case.send {
            Call::Event(bad) => {
                good_index += 1;
                let good_id = format!("good-{good_index}");
                let events = vec![bad, event(GOOD, &good_id)];
                match client
                    .record_batch(req(v1::RecordBatchRequest { events }))
                    .await
                {
                    Err(status) => Got::Grpc(status.code(), status.message().to_string()),
                    Ok(response) => {
                        let outcomes = response.into_inner().outcomes;
                        match outcomes.get(1).and_then(|o| o.outcome.clone()) {
                            Some(v1::record_outcome::Outcome::Receipt(_)) => good_ids.push(good_id),
                            other => {
                                failures.push(format!(
                                    "{}: the good event beside it was not recorded: {other:?}",
                                    case.name
                                ));
                            }
                        }
                        match outcomes.first().and_then(|o| o.outcome.clone()) {
                            Some(v1::record_outcome::Outcome::Receipt(receipt)) => {
                                Got::Receipt(receipt)
                            }
                            Some(v1::record_outcome::Outcome::Error(error)) => {
                                Got::EventError(error.code, error.field, error.message)
                            }
                            None => Got::GoodRefused("no outcome".into()),
                        }
                    }
                }
            }
            Call::Record(event) => grpc_got(client.record(req(v1::RecordRequest { event })).await),
            Call::Batch(events) => grpc_got(
                client
                    .record_batch(req(v1::RecordBatchRequest { events }))
                    .await,
            ),
            Call::Raw(path, body) => grpc_got(
                grpc_raw(&node.endpoint(), path, body, CALL_TIMEOUT)
                    .await
                    .map(tonic::Response::new),
            ),
            Call::RawAtOnce(path, body, calls) => {
                let calls: Vec<_> = (0..calls)
                    .map(|_| {
                        let (endpoint, body) = (node.endpoint(), body.clone());
                        tokio::spawn(
                            async move { grpc_raw(&endpoint, path, body, CALL_TIMEOUT).await },
                        )
                    })
                    .collect();
                let mut answers = Vec::new();
                for call in calls {
                    answers.push(call.await.expect("call task").map(tonic::Response::new));
                }
                let odd = answers.iter().position(|answer| match answer {
                    Ok(_) => true,
                    Err(status) => status.code() != Code::InvalidArgument,
                });
                grpc_got(answers.swap_remove(odd.unwrap_or(0)))
            }
            Call::GetEvent(message) => grpc_got(client.get_event(req(message)).await),
            Call::GetProof(message) => grpc_got(client.get_proof(req(message)).await),
            Call::GetCheckpoint(message) => grpc_got(client.get_checkpoint(req(message)).await),
            Call::GetBlock(message) => grpc_got(client.get_block(req(message)).await),
            Call::ConsistencyProof(message) => {
                grpc_got(client.get_consistency_proof(req(message)).await)
            }
            Call::ListStreams(message) => grpc_got(client.list_streams(req(message)).await),
            Call::Query(message) => grpc_got(client.query(req(message)).await),
            Call::QueryWith(message, name, value) => {
                let mut request = req(message);
                request.metadata_mut().insert(
                    tonic::metadata::MetadataKey::from_static(name),
                    value.parse().expect("ASCII metadata"),
                );
                grpc_got(client.query(request).await)
            }
            Call::Count(message) => grpc_got(client.count(req(message)).await),
            Call::Tail(message) => grpc_got(client.tail(req(message)).await),
            Call::Export(message) => grpc_got(client.record_export(req(message)).await),
            Call::Raft(method) => {
                let channel = tonic::transport::Channel::from_shared(node.endpoint())
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect");
                let mut raft = RaftTransportClient::new(channel);
                // What a forged message would carry: an empty cluster id is a single
                // node's, group 1 is a data shard.
                let message = RaftRequest {
                    cluster_id: String::new(),
                    group_id: 1,
                    target_node: 1,
                    from_node: 2,
                    payload: vec![0; 64],
                };
                let answer = match method {
                    "vote" => raft.vote(req(message)).await,
                    "append" => raft.append_entries(req(message)).await,
                    _ => raft.install_snapshot(req(message)).await,
                };
                grpc_got(answer)
            }
            Call::Http(bytes) => http_got(&node.host, node.http_port, bytes).await,
            Call::GrpcPortBytes(bytes) => http_got(&node.host, node.grpc_port, bytes).await,
        };
        let elapsed = case_started.elapsed();
        let verdict = check(&case.expect, &case.says, &got);
        println!(
            "{:<44} {:<7} {:>6} ms  expected {:?}  got {}",
            case.name,
            if verdict.is_ok() { "ok" } else { "FAILED" },
            elapsed.as_millis(),
            case.expect,
            summary(&got)
        );
        if let Err(why) = verdict {
            failures.push(format!("{}: {why}", case.name));
        }
        let (_, _, threads) = process_usage(pid);
        peak_threads = peak_threads.max(threads);
    }

    // Step 3: two reindexes at once; the index ends up whole.
    let mut second = client.clone();
    let (one, two) = tokio::join!(
        client.reindex(req(v1::ReindexRequest {})),
        second.reindex(req(v1::ReindexRequest {}))
    );
    let answers = [one.map(|_| ()), two.map(|_| ())];
    let started_reindex = answers.iter().filter(|answer| answer.is_ok()).count();
    if started_reindex == 0 {
        failures.push(format!("Reindex: neither call started one: {answers:?}"));
    }
    for answer in &answers {
        if let Err(status) = answer {
            if status.code() != Code::FailedPrecondition {
                failures.push(format!(
                    "Reindex while one runs: {:?} {}, expected FAILED_PRECONDITION or a join",
                    status.code(),
                    status.message()
                ));
            }
        }
    }
    let good_count = good_ids.len() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let indexed = loop {
        let count = client
            .count(req(v1::CountRequest {
                tenant_id: GOOD.into(),
                filter: Some(v1::QueryFilter {
                    action: "auth.login".into(),
                    ..Default::default()
                }),
                consistency: 0,
            }))
            .await
            .map(|count| count.into_inner().count);
        let rebuilding: u64 = node
            .status()
            .await
            .shards
            .iter()
            .map(|shard| shard.index_rebuild_remaining)
            .sum();
        match count {
            Ok(count) if count == good_count && rebuilding == 0 => break count,
            _ if std::time::Instant::now() > deadline => break count.unwrap_or(0),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    if indexed != good_count {
        failures.push(format!(
            "after the reindexes the index counts {indexed} of the {good_count} good events"
        ));
    }

    // Step 4: unknown tenants read above were not created.
    let listed = client
        .list_streams(req(v1::ListStreamsRequest {
            after_tenant_id: String::new(),
            limit: 10_000,
        }))
        .await
        .expect("ListStreams")
        .into_inner();
    let tenants: Vec<&str> = listed
        .streams
        .iter()
        .map(|stream| stream.tenant_id.as_str())
        .collect();
    let ghosts: Vec<&&str> = tenants
        .iter()
        .filter(|tenant| tenant.starts_with("ten_ghost"))
        .collect();
    if !ghosts.is_empty() {
        failures.push(format!("reads created tenants: {ghosts:?}"));
    }
    for tenant in (1..=8).map(|index| format!("ten_ghost_{index}")) {
        let tail = client
            .tail(req(v1::TailRequest {
                tenant_id: tenant.clone(),
                ..Default::default()
            }))
            .await
            .expect("Tail")
            .into_inner();
        if tail.last_seq != 0 || !tail.events.is_empty() {
            failures.push(format!(
                "{tenant} has {} events after being read: {:?}",
                tail.last_seq,
                tail.events
                    .first()
                    .and_then(|e| e.event.as_ref())
                    .map(|e| &e.action)
            ));
        }
    }
    assert!(
        tenants.contains(&GOOD) && tenants.contains(&"ten_other"),
        "{tenants:?}"
    );
    let streams: u32 = node
        .status()
        .await
        .shards
        .iter()
        .map(|shard| shard.streams)
        .sum();
    if streams as usize != tenants.len() {
        failures.push(format!(
            "Status counts {streams} streams, ListStreams lists {tenants:?}"
        ));
    }

    // The good events are stored.
    let stored = client
        .tail(req(v1::TailRequest {
            tenant_id: GOOD.into(),
            limit: 1_000,
            ..Default::default()
        }))
        .await
        .expect("Tail of the good tenant")
        .into_inner();
    let stored_ids: Vec<&str> = stored
        .events
        .iter()
        .filter_map(|stored| stored.event.as_ref())
        .map(|event| event.event_id.as_str())
        .collect();
    let missing: Vec<&String> = good_ids
        .iter()
        .filter(|id| !stored_ids.contains(&id.as_str()))
        .collect();
    if !missing.is_empty() {
        failures.push(format!("good events not stored: {missing:?}"));
    }
    let logins = stored
        .events
        .iter()
        .filter_map(|stored| stored.event.as_ref())
        .filter(|event| event.action == "auth.login")
        .count();
    if logins != good_ids.len() {
        failures.push(format!(
            "{logins} auth.login events stored in {GOOD}, {} good ones sent: a bad event was \
             recorded",
            good_ids.len()
        ));
    }

    // The node is up, with bounded memory and threads.
    let status = node.try_status().await;
    let (peak_rss, rss, threads) = process_usage(pid);
    peak_threads = peak_threads.max(threads);
    println!(
        "{case_count} cases in {:?}; node memory: idle {} MiB, peak {} MiB, now {} MiB; \
         threads: idle {idle_threads}, peak {peak_threads}",
        started.elapsed(),
        idle_rss >> 20,
        peak_rss >> 20,
        rss >> 20
    );
    assert!(status.is_ok(), "Status after the cases: {status:?}");
    if peak_rss > PEAK_RSS_BYTES_MAX {
        failures.push(format!(
            "peak memory {} MiB over the bound of {} MiB",
            peak_rss >> 20,
            PEAK_RSS_BYTES_MAX >> 20
        ));
    }
    if peak_threads > THREADS_MAX {
        failures.push(format!(
            "{peak_threads} threads over the bound of {THREADS_MAX}"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {case_count} cases and checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// `bytes` sent to `port` as an HTTP/1 request (on a blocking thread).
async fn http_got(host: &str, port: u16, bytes: Vec<u8>) -> Got {
    let host = host.to_string();
    let response = tokio::task::spawn_blocking(move || http_raw(&host, port, &bytes, CALL_TIMEOUT))
        .await
        .expect("HTTP task");
    let parameter = serde_json::from_str::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|body| {
            body.pointer("/error/parameter")
                .and_then(|value| value.as_str())
                .map(str::to_string)
        });
    Got::Http(response.status, parameter, response.body)
}

fn grpc_got<T>(answer: Result<tonic::Response<T>, tonic::Status>) -> Got {
    match answer {
        Ok(_) => Got::Ok,
        Err(status) => Got::Grpc(status.code(), status.message().to_string()),
    }
}

fn summary(got: &Got) -> String {
    let short = |text: &str| text.chars().take(140).collect::<String>();
    match got {
        Got::Ok => "OK".into(),
        Got::Grpc(code, message) => format!("{code:?}: {}", short(message)),
        Got::EventError(code, field, message) => format!("{code} [{field}] {}", short(message)),
        Got::Receipt(receipt) => format!(
            "receipt seq {} deduplicated {}",
            receipt.seq, receipt.deduplicated
        ),
        Got::Http(status, parameter, body) => {
            format!("{status} [{parameter:?}] {}", short(body))
        }
        Got::GoodRefused(why) => why.clone(),
    }
}

/// Whether `got` is what `expect` says (and holds every text of `says`).
fn check(expect: &Expect, says: &[String], got: &Got) -> Result<(), String> {
    let message = match (expect, got) {
        (Expect::Either(one, other), got) => {
            return check(one, says, got).or_else(|first| {
                check(other, says, got).map_err(|second| format!("{first}; or {second}"))
            })
        }
        (Expect::Ok, Got::Ok) => String::new(),
        (Expect::Grpc(code, field), Got::Grpc(got_code, message)) => {
            if got_code != code {
                return Err(format!("{got_code:?} ({message}), expected {code:?}"));
            }
            if let Some(field) = field {
                let named = message
                    .strip_prefix(field)
                    .is_some_and(|rest| rest.starts_with(':') || rest.starts_with(' '));
                if !named {
                    return Err(format!("the message does not name {field}: {message}"));
                }
            }
            message.clone()
        }
        (Expect::EventError(code, field), Got::EventError(got_code, got_field, message)) => {
            if got_code != code || got_field != field {
                return Err(format!(
                    "{got_code} on {got_field:?} ({message}), expected {code} on {field}"
                ));
            }
            if *code == "INVALID_ARGUMENT" && !message.starts_with(field) {
                return Err(format!("the message does not name {field}: {message}"));
            }
            message.clone()
        }
        (Expect::Deduplicated(seq, leaf_hash), Got::Receipt(receipt)) => {
            if !receipt.deduplicated || receipt.seq != *seq || &receipt.leaf_hash != leaf_hash {
                return Err(format!(
                    "receipt seq {} deduplicated {}, expected the first receipt (seq {seq}) \
                     deduplicated with its leaf hash",
                    receipt.seq, receipt.deduplicated
                ));
            }
            String::new()
        }
        (Expect::Http(status, parameter), Got::Http(got_status, got_parameter, body)) => {
            if got_status != status {
                return Err(format!("HTTP {got_status} ({body}), expected {status}"));
            }
            if got_parameter.as_deref() != *parameter {
                return Err(format!(
                    "parameter {got_parameter:?} ({body}), expected {parameter:?}"
                ));
            }
            body.clone()
        }
        (expect, got) => return Err(format!("got {}, expected {expect:?}", summary(got))),
    };
    for text in says {
        if !message.contains(text.as_str()) {
            return Err(format!("the message does not say {text:?}: {message}"));
        }
    }
    Ok(())
}
