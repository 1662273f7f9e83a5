//! HTTP on actix-web: `/health`, Prometheus `/metrics`, and the REST query API
//! (docs/QUERY.md):
//!
//! - `GET /api/v1/tenants/{tenant}/audit-logs?actor_id=&actor_type=&action=&resource_type=
//!   &resource_id=&result=&request_id=&start_time=&end_time=&limit=&cursor=&order=
//!   &consistency=`
//!   answers `{"events": [...], "count": n, "next_cursor": "..." | null, "partial": bool,
//!   "scanned_to": {"stream", "seq"} | null, "events_examined": n}`;
//! - `GET /api/v1/tenants/{tenant}/audit-logs/{event_id}` answers the event.
//!
//! Events are JSON in the workload's shape (`../shared/workload/README.md`, the shape
//! `trailctl get` prints): enums upper case as ingested (`"USER"`, `"FAILURE"`), times
//! RFC 3339 in UTC with nanoseconds, empty optional fields left out, plus `stream`,
//! `seq`, `ingested_at` and `leaf_hash` (hex). Errors are
//! `{"error": {"code", "message", "parameter"}}` with 400 (bad input), 404 (no such
//! event or route), 500 (a stored record failed its checks) or 503 (storage failed).
//!
//! In a cluster any node answers: a request for a tenant whose shard another node
//! leads is forwarded once to that node's REST API (`trail-leader` in the response
//! names it), as gRPC calls are. `consistency=eventual` (list, count, one event) lets
//! the node's own replica answer, as far as it has applied.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use actix_web::http::StatusCode;
use actix_web::{get, web, HttpRequest, HttpResponse, Responder};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::access::{Principal, Role};
use crate::ledger::{ActorKind, Outcome};
use crate::node::cluster::{FORWARDED_HEADER, LEADER_HEADER};
use crate::node::{Node, RouteError};
use crate::query::ReadError;
use crate::shard::reader::{self, ReadEvent};
use crate::shard::ShardHandle;

use super::audit::ReadBy;
use super::forward::replica_here;
use super::headers::{ACTOR_HEADER, FORWARDED_FOR_HEADER};
use super::params::{Consistency, ParamError};
use super::query::{self, rest_parameters, QueryError};

#[get("/health")]
async fn health() -> impl Responder {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

#[get("/metrics")]
async fn metrics(node: web::Data<Node>, request: HttpRequest) -> HttpResponse {
    if let Err(answer) = super::auth::authorize_http(
        &node,
        &request,
        Role::Admin,
        None,
        "read the node's metrics",
    ) {
        return *answer;
    }
    let mut body = String::new();
    let per_shard =
        |body: &mut String, name: &str, kind: &str, value: &dyn Fn(&ShardHandle) -> u64| {
            let _ = writeln!(body, "# TYPE {name} {kind}");
            for shard in node.router.shards() {
                let _ = writeln!(
                    body,
                    "{name}{{shard=\"{}\"}} {}",
                    shard.shard,
                    value(&shard)
                );
            }
        };
    per_shard(&mut body, "trail_events_total", "counter", &|shard| {
        shard.counters.events_total.load(Ordering::Relaxed)
    });
    per_shard(&mut body, "trail_last_applied_index", "gauge", &|shard| {
        shard.counters.last_applied_index.load(Ordering::Relaxed)
    });
    per_shard(&mut body, "trail_ingest_queue_bytes", "gauge", &|shard| {
        shard.queue.depth_bytes() as u64
    });
    per_shard(&mut body, "trail_index_lag_ms", "gauge", &|shard| {
        node.index
            .progress(shard.shard)
            .map_or(0, |progress| progress.lag_ms.load(Ordering::Relaxed))
    });
    // Time the shard's proposals waited for the indexes to catch up (backpressure).
    per_shard(
        &mut body,
        "trail_ingest_index_held_ms_total",
        "counter",
        &|shard| shard.index_gate.held_us() / 1_000,
    );
    // Event ids applied and not yet in the dedup index's tables (storage/dedup.rs):
    // bounded per shard; at the bound apply waits for the ingest thread.
    per_shard(&mut body, "trail_dedup_overlay_ids", "gauge", &|shard| {
        shard.keyspaces.dedup_overlay_len() as u64
    });
    // Committed entries refused at apply (forged or corrupt: `ledger::recheck`), and
    // Raft messages the peer listener refused (another cluster, not a member).
    per_shard(
        &mut body,
        "trail_apply_refused_entries_total",
        "counter",
        &|shard| shard.counters.entries_refused.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        body,
        "# TYPE trail_raft_messages_refused_total counter\ntrail_raft_messages_refused_total {}",
        node.groups.refused_total()
    );
    // Disk per keyspace of each shard (SST and blob files; journals are counted apart).
    let name = "trail_storage_disk_bytes";
    let _ = writeln!(body, "# TYPE {name} gauge");
    for shard in node.router.shards() {
        for (keyspace, bytes) in shard.keyspaces.disk_bytes() {
            let _ = writeln!(
                body,
                "{name}{{shard=\"{}\",keyspace=\"{keyspace}\"}} {bytes}",
                shard.shard,
            );
        }
    }
    let memory = super::process_memory();
    // The storage engine's memory and journal: memtables are bounded per keyspace
    // (storage/mod.rs) and journals are deleted once every keyspace flushed past
    // them, so these stay bounded; a climb means flushes are not keeping up.
    let storage = node.store.metrics();
    for (name, value) in [
        ("trail_process_resident_memory_bytes", memory.rss_bytes),
        (
            "trail_process_peak_resident_memory_bytes",
            memory.peak_rss_bytes,
        ),
        ("trail_storage_memtable_bytes", storage.memtable_bytes),
        ("trail_storage_journal_bytes", storage.journal_bytes),
        ("trail_storage_journals", storage.journals),
        ("trail_storage_flushes_pending", storage.flushes_pending),
    ] {
        let _ = writeln!(body, "# TYPE {name} gauge");
        let _ = writeln!(body, "{name} {value}");
    }
    // In a cluster: what this node sent on to other nodes' leaders. Clients that go
    // to the leaders directly (the SDK splits batches by leader) keep these low.
    if let Some(forwarder) = &node.forwarder {
        let counters = &forwarder.counters;
        for (name, counter) in [
            (
                "trail_forwarded_grpc_requests_total",
                &counters.grpc_requests,
            ),
            ("trail_forwarded_batch_events_total", &counters.batch_events),
            (
                "trail_forwarded_rest_requests_total",
                &counters.rest_requests,
            ),
        ] {
            let _ = writeln!(body, "# TYPE {name} counter");
            let _ = writeln!(body, "{name} {}", counter.load(Ordering::Relaxed));
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(body)
}

/// `{"count": n}`: the tenant's events matching the filters, from the indexes.
#[get("/tenants/{tenant}/audit-logs/count")]
async fn count_audit_logs(
    node: web::Data<Node>,
    path: web::Path<String>,
    request: HttpRequest,
) -> HttpResponse {
    let input = match query::rest_count_input(&path.into_inner(), request.query_string()) {
        Ok(input) => input,
        Err(error) => return bad_request(error),
    };
    let principal = match super::auth::authorize_http(
        &node,
        &request,
        Role::Read,
        Some(&input.tenant_id),
        "count events",
    ) {
        Ok(principal) => principal,
        Err(answer) => return *answer,
    };
    if let Some(response) =
        forward_to_leader(&node, &request, &input.tenant_id, input.consistency).await
    {
        return response;
    }
    let by = read_by(&node, &request, &principal);
    let counted = query::count_events(
        &node,
        input.tenant_id,
        input.filters,
        input.consistency,
        &by,
    )
    .await;
    match counted {
        Ok(count) => HttpResponse::Ok().json(serde_json::json!({ "count": count })),
        Err(QueryError::Invalid(error)) => bad_request(error.into()),
        Err(QueryError::Read(error)) => read_failed(error),
        Err(QueryError::Unavailable(reason)) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason, None)
        }
        Err(QueryError::Barrier(error)) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &error.to_string(),
            None,
        ),
        Err(QueryError::Route(error)) => route_failed(error),
    }
}

/// In a cluster, a request for a tenant whose shard another node leads is sent on to
/// that node's REST API once (marked `trail-forwarded`, with the caller's actor,
/// user agent and address), and its answer is passed back as it is, with
/// `trail-leader` naming the leader's REST base. `None`: serve it here (also an
/// eventual read of a shard with a replica here).
async fn forward_to_leader(
    node: &Node,
    request: &HttpRequest,
    tenant_id: &str,
    consistency: Consistency,
) -> Option<HttpResponse> {
    if replica_here(node, tenant_id, consistency) {
        return None;
    }
    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
    let target = super::forward::target(node, tenant_id, forwarded)?;
    let forwarder = node.forwarder.as_ref()?;
    let mut headers = vec![(FORWARDED_HEADER, node.config.node_id.to_string())];
    // The caller's token goes on: the leader authenticates the request again.
    for name in [ACTOR_HEADER, "user-agent", super::auth::AUTHORIZATION] {
        if let Some(value) = request.headers().get(name).and_then(|v| v.to_str().ok()) {
            headers.push((name, value.to_string()));
        }
    }
    if let Some(peer) = request.peer_addr() {
        headers.push((FORWARDED_FOR_HEADER, peer.to_string()));
    }
    let path_and_query = match request.uri().path_and_query() {
        Some(path_and_query) => path_and_query.as_str(),
        None => request.path(),
    };
    let answer = forwarder
        .http_get(target.node, path_and_query, &headers)
        .await;
    Some(match answer {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut response = HttpResponse::build(status);
            if let Some(content_type) = answer.content_type {
                response.content_type(content_type);
            }
            response.insert_header((LEADER_HEADER, answer.base));
            response.body(answer.body)
        }
        Err(problem) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &format!(
                "the shard's leader is node {}: {problem}; retry",
                target.node
            ),
            None,
        ),
    })
}

/// A tenant whose shard is not served here: not yet placed, or no leader known.
fn route_failed(error: RouteError) -> HttpResponse {
    let status = match error {
        RouteError::NotInitialized => StatusCode::CONFLICT,
        RouteError::NotHosted { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_response(status, "unavailable", &error.to_string(), None)
}

#[get("/tenants/{tenant}/audit-logs")]
async fn list_audit_logs(
    node: web::Data<Node>,
    path: web::Path<String>,
    request: HttpRequest,
) -> HttpResponse {
    let input = match query::rest_input(&path.into_inner(), request.query_string()) {
        Ok(input) => input,
        Err(error) => return bad_request(error),
    };
    let principal = match super::auth::authorize_http(
        &node,
        &request,
        Role::Read,
        Some(&input.tenant_id),
        "query events",
    ) {
        Ok(principal) => principal,
        Err(answer) => return *answer,
    };
    if let Some(response) =
        forward_to_leader(&node, &request, &input.tenant_id, input.consistency).await
    {
        return response;
    }
    let by = read_by(&node, &request, &principal);
    let output = match query::run(&node, input, &by).await {
        Ok(output) => output,
        Err(QueryError::Invalid(error)) => return bad_request(error.into()),
        Err(QueryError::Read(error)) => return read_failed(error),
        Err(QueryError::Unavailable(reason)) => {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason, None)
        }
        Err(QueryError::Barrier(error)) => {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                &error.to_string(),
                None,
            )
        }
        Err(QueryError::Route(error)) => return route_failed(error),
    };
    // A page of 1,000 events is a few milliseconds of JSON: off the actix thread, under
    // the read permits.
    let body = query::gated_read(&node, move || {
        let page = output.page;
        let events: Vec<EventJson<'_>> = page.events.iter().map(event_json).collect();
        let scanned_to = page.scanned_to.map(|(occurred_at_ns, seq)| PositionJson {
            stream: &page.stream,
            seq,
            occurred_at: rfc3339(occurred_at_ns),
        });
        serde_json::to_vec(&PageJson {
            count: events.len(),
            events,
            next_cursor: output.next_cursor,
            partial: page.partial,
            scanned_to,
            events_examined: page.examined,
            access_path: page.path.map_or("", |path| path.name()),
            tail_events: page.tail_events,
        })
    })
    .await;
    match body {
        Ok(Ok(body)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        _ => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "response encoding failed",
            None,
        ),
    }
}

// `.+`: event ids may contain `/` (any printable ASCII), and still name one event.
#[get("/tenants/{tenant}/audit-logs/{event_id:.+}")]
async fn get_audit_log(
    node: web::Data<Node>,
    path: web::Path<(String, String)>,
    request: HttpRequest,
) -> HttpResponse {
    let (tenant, event_id) = path.into_inner();
    if let Err(answer) =
        super::auth::authorize_http(&node, &request, Role::Read, Some(&tenant), "read events")
    {
        return *answer;
    }
    let consistency =
        match rest_parameters(request.query_string(), &["consistency"]).and_then(|mut values| {
            Consistency::from_rest(&values.remove("consistency").unwrap_or_default())
        }) {
            Ok(consistency) => consistency,
            Err(error) => return bad_request(error),
        };
    let tenant_id = match crate::ledger::validate_tenant_id(&tenant) {
        Ok(tenant_id) => tenant_id,
        Err(error) => return bad_request(error.into()),
    };
    // Ingest's rule: an id no event can have never becomes a storage key.
    if let Err(error) = crate::ledger::validate::validate_event_id("event_id", &event_id) {
        return bad_request(error.into());
    }
    if let Some(response) = forward_to_leader(&node, &request, &tenant_id, consistency).await {
        return response;
    }
    let shard = match node.router.shard_for(&tenant_id) {
        Ok(shard) => shard,
        Err(error) => return route_failed(error),
    };
    let barrier = if consistency.needs_barrier() {
        shard.read_barrier().await
    } else {
        Ok(())
    };
    if let Err(error) = barrier {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &error.to_string(),
            None,
        );
    }
    let keyspaces = shard.keyspaces.clone();
    let read_tenant = tenant_id.clone();
    let read_event_id = event_id.clone();
    let found = query::gated_read(&node, move || {
        reader::get_event(&keyspaces, &read_tenant, &read_event_id)
    })
    .await;
    match found {
        Err(reason) => error_response(StatusCode::SERVICE_UNAVAILABLE, "unavailable", reason, None),
        Ok(Err(error)) => read_failed(error),
        Ok(Ok(None)) => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no event {event_id:?} in tenant {tenant_id}"),
            Some("event_id"),
        ),
        Ok(Ok(Some(event))) => HttpResponse::Ok().json(event_json(&event)),
    }
}

/// Anything else under `/api/v1`: a JSON 405 (with `Allow: GET`) for another method on
/// a path the API serves, else a JSON 404 naming the path.
async fn no_route(request: HttpRequest) -> HttpResponse {
    if is_api_path(request.path()) {
        let mut response = error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!(
                "{} is not served here: the audit-log API is read-only over REST (GET); \
                 events are recorded through gRPC (RecordBatch)",
                request.method()
            ),
            None,
        );
        response.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!(
            "no route {} {}; see docs/QUERY.md (GET /api/v1/tenants/{{tenant}}/audit-logs)",
            request.method(),
            request.path()
        ),
        None,
    )
}

/// Whether `path` is one the API serves with GET: `/api/v1/tenants/{tenant}/audit-logs`,
/// its `/count` and its `/{event_id}`.
fn is_api_path(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "api", "v1", "tenants", tenant, "audit-logs"]
            | ["", "api", "v1", "tenants", tenant, "audit-logs", _]
            if !tenant.is_empty()
    )
}

fn bad_request(error: ParamError) -> HttpResponse {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_argument",
        &error.to_string(),
        Some(&error.parameter),
    )
}

/// Who sent a read, for its audit record: the address a peer node forwarded the
/// request for (trusted from peers only), else the connection's.
fn read_by(node: &Node, request: &HttpRequest, principal: &Principal) -> ReadBy {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    let client = super::forward::trusted_client_addr(
        node,
        header(FORWARDED_FOR_HEADER),
        request.peer_addr(),
    );
    ReadBy::new(
        principal,
        header(ACTOR_HEADER),
        client,
        header("user-agent"),
    )
}

fn read_failed(error: ReadError) -> HttpResponse {
    // Reported in full in the node's log; the caller learns only the kind of failure.
    tracing::error!(%error, "read failed");
    match error {
        ReadError::Storage(_) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "storage read failed; retry",
            None,
        ),
        ReadError::Corrupt { .. } => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "data_loss",
            "a stored record failed its integrity checks",
            None,
        ),
        error @ ReadError::IndexBehind { .. } => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &error.to_string(),
            None,
        ),
        error @ ReadError::TooBroad { .. } => error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "resource_exhausted",
            &error.to_string(),
            None,
        ),
    }
}

fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    parameter: Option<&str>,
) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({
        "error": { "code": code, "message": message, "parameter": parameter }
    }))
}

#[derive(Serialize)]
struct PageJson<'a> {
    events: Vec<EventJson<'a>>,
    count: usize,
    /// `null` when there is nothing more to read.
    next_cursor: Option<String>,
    partial: bool,
    scanned_to: Option<PositionJson<'a>>,
    events_examined: u64,
    access_path: &'static str,
    tail_events: u64,
}

#[derive(Serialize)]
struct PositionJson<'a> {
    stream: &'a str,
    seq: u64,
    occurred_at: String,
}

/// An event in the workload's shape, fields in its order, then what the ledger added.
#[derive(Serialize)]
struct EventJson<'a> {
    event_id: &'a str,
    tenant_id: &'a str,
    actor: ActorJson<'a>,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<ResourceJson<'a>>,
    result: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    ip_address: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    user_agent: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    session_id: &'a str,
    occurred_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataJson<'a>>,
    subject_id: &'a str,
    stream: &'a str,
    seq: u64,
    ingested_at: String,
    leaf_hash: String,
}

/// Stored metadata: its JSON text spliced in as it is, or a string if it is not JSON.
#[derive(Serialize)]
#[serde(untagged)]
enum MetadataJson<'a> {
    Raw(&'a serde_json::value::RawValue),
    Text(&'a str),
}

#[derive(Serialize)]
struct ActorJson<'a> {
    #[serde(rename = "type")]
    actor_type: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    email: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
}

#[derive(Serialize)]
struct ResourceJson<'a> {
    #[serde(rename = "type")]
    resource_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
}

fn event_json(read: &ReadEvent) -> EventJson<'_> {
    let stored = &read.stored;
    let event = &stored.event;
    // Metadata is shown as the stored bytes, the ones the leaf hash covers: parsing and
    // re-serializing would sort keys and rewrite numbers and escapes. It was validated
    // as a JSON object at ingest; should a stored value ever not parse, it is shown as
    // the string it is rather than dropped.
    let metadata = if event.metadata_json.is_empty() {
        None
    } else {
        Some(
            match serde_json::from_str::<&serde_json::value::RawValue>(&event.metadata_json) {
                Ok(raw) => MetadataJson::Raw(raw),
                Err(_) => MetadataJson::Text(&event.metadata_json),
            },
        )
    };
    EventJson {
        event_id: &event.event_id,
        tenant_id: &event.tenant_id,
        actor: ActorJson {
            actor_type: match event.actor_kind {
                ActorKind::User => "USER",
                ActorKind::Service => "SERVICE",
                ActorKind::System => "SYSTEM",
            },
            id: &event.actor_id,
            email: &event.actor_email,
            name: &event.actor_name,
        },
        action: &event.action,
        resource: if event.resource_type.is_empty() {
            None
        } else {
            Some(ResourceJson {
                resource_type: &event.resource_type,
                id: &event.resource_id,
            })
        },
        result: match event.outcome {
            Outcome::Success => "SUCCESS",
            Outcome::Failure => "FAILURE",
            Outcome::Denied => "DENIED",
        },
        ip_address: &event.ip_address,
        user_agent: &event.user_agent,
        request_id: &event.request_id,
        session_id: &event.session_id,
        occurred_at: rfc3339(event.occurred_at_ns),
        metadata,
        subject_id: &event.subject_id,
        stream: &stored.stream,
        seq: stored.seq,
        ingested_at: rfc3339(stored.ingested_at_ns),
        leaf_hash: hex(&read.leaf_hash),
    }
}

/// RFC 3339 in UTC with nine fractional digits, so times sort as text.
fn rfc3339(ns: i64) -> String {
    let seconds = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    DateTime::<Utc>::from_timestamp(seconds, nanos)
        .expect("i64 nanoseconds are within chrono's range")
        .to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

pub fn configure(config: &mut web::ServiceConfig) {
    config.service(health).service(metrics).service(
        web::scope("/api/v1")
            .service(list_audit_logs)
            // Before `{event_id}`, which would otherwise take "count".
            .service(count_audit_logs)
            .service(get_audit_log)
            .default_service(web::to(no_route)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::sample_event;
    use crate::ledger::StoredEvent;

    #[test]
    fn other_methods_on_api_paths_are_told_apart_from_unknown_paths() {
        for path in [
            "/api/v1/tenants/ten_1/audit-logs",
            "/api/v1/tenants/ten_1/audit-logs/",
            "/api/v1/tenants/ten_1/audit-logs/count",
            "/api/v1/tenants/ten_1/audit-logs/evt_1",
        ] {
            assert!(is_api_path(path), "{path}");
        }
        for path in [
            "/api/v1/tenants//audit-logs",
            "/api/v1/tenants/ten_1",
            "/api/v1/tenants/ten_1/audit-logs/evt_1/more",
            "/api/v2/tenants/ten_1/audit-logs",
        ] {
            assert!(!is_api_path(path), "{path}");
        }
    }

    #[test]
    fn event_json_has_the_workload_shape() {
        let read = ReadEvent {
            stored: StoredEvent {
                stream: "ten_0001/0".into(),
                seq: 3,
                ingested_at_ns: 1_735_689_603_000_000_001,
                event: sample_event("ten_0001", "evt_1"),
            },
            leaf_hash: [0xab; 32],
        };
        let value = serde_json::to_value(event_json(&read)).unwrap();
        assert_eq!(value["actor"]["type"], "USER");
        assert_eq!(value["actor"]["id"], "usr_1");
        assert_eq!(value["resource"]["type"], "session");
        assert_eq!(value["result"], "SUCCESS");
        assert_eq!(value["occurred_at"], "2025-01-01T00:00:02.719812000Z");
        assert_eq!(value["ingested_at"], "2025-01-01T00:00:03.000000001Z");
        assert_eq!(value["metadata"]["mfa"], true);
        assert_eq!(value["seq"], 3);
        assert_eq!(value["leaf_hash"], "ab".repeat(32));
        assert!(value.get("session_id").is_none());
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn metadata_is_shown_as_the_stored_bytes() {
        let mut event = sample_event("ten_0001", "evt_1");
        // Key order, a trailing zero, an exponent, an escape and inner spaces are all
        // things a parse and re-serialization would change.
        event.metadata_json = r#"{"z": 1, "a":2.50,"big":1E3,"s":"\u00e9"}"#.to_string();
        let read = ReadEvent {
            stored: StoredEvent {
                stream: "ten_0001/0".into(),
                seq: 1,
                ingested_at_ns: 1_735_689_603_000_000_000,
                event,
            },
            leaf_hash: [0; 32],
        };
        let text = serde_json::to_string(&event_json(&read)).unwrap();
        assert!(
            text.contains(r#","metadata":{"z": 1, "a":2.50,"big":1E3,"s":"\u00e9"},"#),
            "{text}"
        );
        let mut not_json = read.clone();
        not_json.stored.event.metadata_json = "not json".to_string();
        let text = serde_json::to_string(&event_json(&not_json)).unwrap();
        assert!(text.contains(r#","metadata":"not json","#), "{text}");
    }
}
