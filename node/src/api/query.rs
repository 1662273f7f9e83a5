//! Queries from the outside: the `Query` RPC and the REST audit-log routes parse their
//! requests here into one validated [`Query`], and both run through [`run`]: the cursor
//! is opened and checked against the tenant, filter and order, the scan runs on the
//! blocking pool, and the next cursor is sealed. See docs/QUERY.md.
//!
//! Every error names the field (gRPC, `filter.actor_id`) or parameter (REST,
//! `actor_id`) and what would be accepted. Filter values are never logged.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::DateTime;
use tonic::Status;
use trail_proto::v1;

use crate::ledger::{validate_tenant_id, ActorKind, FieldError, Outcome};
use crate::node::{Node, RouteError};
use crate::query::cursor::{tenant_digest, Cursor};
use crate::query::filter::{
    action_filter, actor_id_filter, request_id_filter, resource_id_filter, resource_type_filter,
};
use crate::query::{Filters, Order, ReadError};
use crate::shard::query::{self, Page, Query, LIMIT_DEFAULT, LIMIT_MAX};
use crate::shard::ReadBarrierError;

use super::audit::{self, record_read, ReadBy, ReadKind};
use super::convert::{barrier_status, read_status, timestamp, to_receipt, to_stored_event};
use super::params::{Consistency, ParamError};
use serde_json::json;

/// Runs a read (`GetEvent`, `Tail`, a REST event or page encoding) on the blocking pool
/// under the same permits as query scans. Request-serving reads thus hold at most
/// [`QUERIES_IN_FLIGHT_MAX`](crate::node::QUERIES_IN_FLIGHT_MAX) of the pool's threads
/// whatever clients do, and apply and snapshot work (also on the blocking pool) always
/// finds threads. `Err`: shutting down, or the task panicked.
pub async fn gated_read<T, F>(node: &Node, work: F) -> Result<T, &'static str>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = node
        .query_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| "node is shutting down")?;
    tokio::task::spawn_blocking(move || {
        // Held as long as the work, even if the caller goes away.
        let _permit = permit;
        work()
    })
    .await
    .map_err(|_| "read task failed")
}

/// The filter fields: a gRPC error names them under `filter.`.
const FILTER_FIELDS: [&str; 9] = [
    "actor_id",
    "actor_type",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "request_id",
    "start_time",
    "end_time",
];

/// The REST parameters of `GET /api/v1/tenants/{tenant}/audit-logs`; the first
/// [`REST_COUNT_PARAMETERS`] are those of its `/count`.
pub const REST_PARAMETERS: [&str; 13] = [
    "actor_id",
    "actor_type",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "request_id",
    "start_time",
    "end_time",
    "consistency",
    "limit",
    "cursor",
    "order",
];

const REST_COUNT_PARAMETERS: usize = 10;

#[derive(Debug)]
pub enum QueryError {
    /// The request is wrong; the error names the field.
    Invalid(FieldError),
    Read(ReadError),
    Unavailable(&'static str),
    /// The shard's linearizable read barrier did not pass (not the leader, timeout).
    Barrier(ReadBarrierError),
    /// The tenant's shard has no replica here, or the cluster has no shards yet.
    Route(RouteError),
}

impl From<QueryError> for Status {
    fn from(error: QueryError) -> Status {
        match error {
            QueryError::Invalid(error) => grpc_invalid(&error),
            QueryError::Read(error) => read_status(error),
            QueryError::Unavailable(reason) => Status::unavailable(reason),
            QueryError::Barrier(error) => barrier_status(error),
            QueryError::Route(error) => error.into(),
        }
    }
}

impl From<FieldError> for QueryError {
    fn from(error: FieldError) -> Self {
        QueryError::Invalid(error)
    }
}

/// A query as parsed from a request, before its cursor is opened.
#[derive(Debug, Clone)]
pub struct QueryInput {
    pub tenant_id: String,
    pub filters: Filters,
    pub limit: usize,
    pub order: Order,
    /// Empty: the first page.
    pub cursor: String,
    pub consistency: Consistency,
}

/// One page, ready to be shaped for the wire.
#[derive(Debug)]
pub struct QueryOutput {
    pub page: Page,
    pub next_cursor: Option<String>,
}

/// Runs a query: opens and checks its cursor, scans on the blocking pool (at most
/// [`QUERIES_IN_FLIGHT_MAX`](crate::node::QUERIES_IN_FLIGHT_MAX) at once), seals the
/// next cursor.
pub async fn run(node: &Node, input: QueryInput, by: &ReadBy) -> Result<QueryOutput, QueryError> {
    let QueryInput {
        tenant_id,
        filters,
        limit,
        order,
        cursor,
        consistency,
    } = input;
    filters.check()?;
    let tenant_digest = tenant_digest(&tenant_id);
    let query_digest = filters.digest(order);
    let after = if cursor.is_empty() {
        None
    } else {
        let opened = node.cursor_key.open(&cursor)?;
        opened.check_scope(&tenant_digest, &query_digest)?;
        // Authenticated, so made by this node; a tenant has one stream today.
        if opened.stream_index != 0 {
            return Err(FieldError::new(
                "cursor",
                format!(
                    "names stream {}, which this node does not serve for the tenant; \
                     start again without a cursor",
                    opened.stream_index
                ),
            )
            .into());
        }
        Some((opened.occurred_at_ns, opened.seq))
    };
    let continued = after.is_some();
    let audited_filters = filters.clone();
    let mut query = Query::new(&tenant_id, filters, limit, order);
    query.after = after;

    let shard = node
        .router
        .shard_for(&tenant_id)
        .map_err(QueryError::Route)?;
    if consistency.needs_barrier() {
        shard.read_barrier().await.map_err(QueryError::Barrier)?;
    }
    let keyspaces = shard.keyspaces.clone();
    let index = node.index.clone();
    let permit = node
        .query_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| QueryError::Unavailable("node is shutting down"))?;
    let started = Instant::now();
    let (page, tenant_known) = tokio::task::spawn_blocking(move || {
        // The permit lives as long as the scan, even if the caller goes away.
        let _permit = permit;
        let page = query::run(&keyspaces, &index, &query)?;
        Ok((page, tenant_exists(&keyspaces, &query.tenant_id)?))
    })
    .await
    .map_err(|_| QueryError::Unavailable("query task failed"))?
    .map_err(QueryError::Read)?;
    tracing::debug!(
        tenant = %tenant_id,
        examined = page.examined,
        path = page.path.map_or("none", |path| path.name()),
        tail = page.tail_events,
        matched = page.events.len(),
        partial = page.partial,
        elapsed_us = started.elapsed().as_micros() as u64,
        "query"
    );
    // One record per query: its first page. Later pages continue it through a cursor
    // that only a recorded first page handed out (recording each page would also make
    // an oldest-first read of everything chase its own records forever). A tenant with
    // no events is not recorded: its record would be its first event, and a read must
    // not create a tenant (its answer is empty, and says nothing of anyone's events).
    if !continued && tenant_known {
        record_read(
            node,
            &tenant_id,
            ReadKind::Query,
            by,
            json!({
                "filter": audit::describe(&audited_filters),
                "order": if order == Order::NewestFirst { "desc" } else { "asc" },
                "first_page_events": page.events.len(),
            }),
        )
        .await
        .map_err(QueryError::Unavailable)?;
    }
    let next_cursor = page.next_after.map(|(occurred_at_ns, seq)| {
        node.cursor_key.seal(&Cursor {
            order,
            tenant_digest,
            query_digest,
            stream_index: 0,
            occurred_at_ns,
            seq,
        })
    });
    Ok(QueryOutput { page, next_cursor })
}

// ---------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------

/// The `Query` RPC.
pub async fn query(
    node: &Node,
    request: v1::QueryRequest,
    by: &ReadBy,
) -> Result<v1::QueryResponse, Status> {
    let input = grpc_input(request).map_err(|error| grpc_invalid(&error))?;
    let output = run(node, input, by).await?;
    let page = output.page;
    let scanned_to = page
        .scanned_to
        .map(|(occurred_at_ns, seq)| v1::StreamPosition {
            stream: page.stream.clone(),
            seq,
            occurred_at: Some(timestamp(occurred_at_ns)),
        });
    Ok(v1::QueryResponse {
        events: page.events.into_iter().map(to_stored_event).collect(),
        next_cursor: output.next_cursor.unwrap_or_default(),
        partial: page.partial,
        scanned_to,
        events_examined: page.examined,
        access_path: page.path.map_or("", |path| path.name()).to_string(),
        tail_events: page.tail_events,
    })
}

/// Counts a tenant's matching events (a filter as `Query` takes it; no cursor).
pub async fn count_events(
    node: &Node,
    tenant_id: String,
    filters: Filters,
    consistency: Consistency,
    by: &ReadBy,
) -> Result<u64, QueryError> {
    filters.check()?;
    let audited = audit::describe(&filters);
    let audited_tenant = tenant_id.clone();
    let shard = node
        .router
        .shard_for(&tenant_id)
        .map_err(QueryError::Route)?;
    if consistency.needs_barrier() {
        shard.read_barrier().await.map_err(QueryError::Barrier)?;
    }
    let keyspaces = shard.keyspaces.clone();
    let index = node.index.clone();
    let permit = node
        .query_permits
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| QueryError::Unavailable("node is shutting down"))?;
    let (count, tenant_known) = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let count = query::count(&keyspaces, &index, &tenant_id, &filters)?;
        Ok((count, tenant_exists(&keyspaces, &tenant_id)?))
    })
    .await
    .map_err(|_| QueryError::Unavailable("count task failed"))?
    .map_err(QueryError::Read)?;
    // An unknown tenant's count (0) is not recorded, as in `run`.
    if !tenant_known {
        return Ok(count);
    }
    record_read(
        node,
        &audited_tenant,
        ReadKind::Count,
        by,
        json!({ "filter": audited, "counted": count }),
    )
    .await
    .map_err(QueryError::Unavailable)?;
    Ok(count)
}

/// The `RecordExport` RPC: an export's `audit_log.export` record, appended before it
/// reads anything.
pub async fn record_export(
    node: &Node,
    request: v1::RecordExportRequest,
    by: &ReadBy,
) -> Result<v1::RecordExportResponse, Status> {
    const FORMAT_BYTES_MAX: usize = 16;
    let format = request.format;
    if format.len() > FORMAT_BYTES_MAX
        || !format
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Status::invalid_argument(format!(
            "format: at most {FORMAT_BYTES_MAX} letters, digits, '-' or '_' (e.g. jsonl, csv)"
        )));
    }
    let input = grpc_input(v1::QueryRequest {
        tenant_id: request.tenant_id,
        filter: request.filter,
        ..v1::QueryRequest::default()
    })
    .map_err(|error| grpc_invalid(&error))?;
    input
        .filters
        .check()
        .map_err(|error| grpc_invalid(&error))?;
    // An export without other filters is a range of the stream, bounded on
    // ingested_at (docs/PROOFS.md, "Exports").
    let time_field = if crate::index::search::asks_more_than_time(&input.filters) {
        "occurred_at"
    } else {
        "ingested_at"
    };
    let details = json!({
        "filter": audit::describe(&input.filters),
        "time_field": time_field,
        "format": format,
    });
    // A tenant with no events has nothing to export: no record (it would create the
    // tenant), and no receipt.
    let shard = node
        .router
        .shard_for(&input.tenant_id)
        .map_err(Status::from)?;
    let keyspaces = shard.keyspaces.clone();
    let tenant_id = input.tenant_id.clone();
    let tenant_known = tokio::task::spawn_blocking(move || tenant_exists(&keyspaces, &tenant_id))
        .await
        .map_err(|_| Status::unavailable("export task failed"))?
        .map_err(read_status)?;
    if !tenant_known {
        return Ok(v1::RecordExportResponse { receipt: None });
    }
    let recorded = record_read(node, &input.tenant_id, ReadKind::Export, by, details)
        .await
        .map_err(Status::unavailable)?;
    Ok(v1::RecordExportResponse {
        receipt: recorded
            .map(|(event_id, receipt)| to_receipt(event_id, input.tenant_id.clone(), receipt)),
    })
}

/// Whether the tenant has events in this replica of its shard (a read of one that has
/// none is answered empty and recorded nowhere).
fn tenant_exists(
    keyspaces: &crate::storage::ShardKeyspaces,
    tenant_id: &str,
) -> Result<bool, ReadError> {
    Ok(keyspaces.has_tenant(tenant_id)?)
}

/// The `Count` RPC.
pub async fn count(
    node: &Node,
    request: v1::CountRequest,
    by: &ReadBy,
) -> Result<v1::CountResponse, Status> {
    let input = grpc_input(v1::QueryRequest {
        tenant_id: request.tenant_id,
        filter: request.filter,
        consistency: request.consistency,
        ..v1::QueryRequest::default()
    })
    .map_err(|error| grpc_invalid(&error))?;
    let count = count_events(node, input.tenant_id, input.filters, input.consistency, by).await?;
    Ok(v1::CountResponse { count })
}

/// INVALID_ARGUMENT naming the field by its path in `QueryRequest`.
fn grpc_invalid(error: &FieldError) -> Status {
    let prefix = if FILTER_FIELDS.contains(&error.field) {
        "filter."
    } else {
        ""
    };
    Status::invalid_argument(format!("{prefix}{}: {}", error.field, error.message))
}

/// Parses a `QueryRequest`. Proto3 has no "absent": empty strings and UNSPECIFIED enums
/// are no filter, and `limit` 0 is the default (50).
pub fn grpc_input(request: v1::QueryRequest) -> Result<QueryInput, FieldError> {
    let tenant_id = validate_tenant_id(&request.tenant_id)?;
    let filter = request.filter.unwrap_or_default();
    let actor_kind = match v1::ActorType::try_from(filter.actor_type) {
        Ok(v1::ActorType::Unspecified) => None,
        Ok(v1::ActorType::User) => Some(ActorKind::User),
        Ok(v1::ActorType::Service) => Some(ActorKind::Service),
        Ok(v1::ActorType::System) => Some(ActorKind::System),
        Err(_) => {
            return Err(FieldError::new(
                "actor_type",
                format!(
                    "unknown value {}: expected USER, SERVICE, SYSTEM or UNSPECIFIED (any)",
                    filter.actor_type
                ),
            ))
        }
    };
    let outcome = match v1::Result::try_from(filter.result) {
        Ok(v1::Result::Unspecified) => None,
        Ok(v1::Result::Success) => Some(Outcome::Success),
        Ok(v1::Result::Failure) => Some(Outcome::Failure),
        Ok(v1::Result::Denied) => Some(Outcome::Denied),
        Err(_) => {
            return Err(FieldError::new(
                "result",
                format!(
                    "unknown value {}: expected SUCCESS, FAILURE, DENIED or UNSPECIFIED (any)",
                    filter.result
                ),
            ))
        }
    };
    let filters = Filters {
        actor_id: actor_id_filter(&filter.actor_id)?,
        actor_kind,
        action: action_filter(&filter.action)?,
        resource_type: resource_type_filter(&filter.resource_type)?,
        resource_id: resource_id_filter(&filter.resource_id)?,
        outcome,
        request_id: request_id_filter(&filter.request_id)?,
        start_time_ns: grpc_time("start_time", filter.start_time.as_ref())?,
        end_time_ns: grpc_time("end_time", filter.end_time.as_ref())?,
    };
    let limit = match request.limit as usize {
        0 => LIMIT_DEFAULT,
        limit if limit > LIMIT_MAX => {
            return Err(FieldError::new(
                "limit",
                format!("{limit} is too large; use 1 to {LIMIT_MAX} (0 means {LIMIT_DEFAULT})"),
            ))
        }
        limit => limit,
    };
    let order = match v1::QueryOrder::try_from(request.order) {
        Ok(v1::QueryOrder::Unspecified | v1::QueryOrder::NewestFirst) => Order::NewestFirst,
        Ok(v1::QueryOrder::OldestFirst) => Order::OldestFirst,
        Err(_) => {
            return Err(FieldError::new(
                "order",
                format!(
                    "unknown value {}: expected NEWEST_FIRST (the default) or OLDEST_FIRST",
                    request.order
                ),
            ))
        }
    };
    Ok(QueryInput {
        tenant_id,
        filters,
        limit,
        order,
        cursor: request.cursor,
        consistency: Consistency::from_wire(request.consistency)?,
    })
}

fn grpc_time(
    field: &'static str,
    time: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, FieldError> {
    let Some(time) = time else {
        return Ok(None);
    };
    if !(0..1_000_000_000).contains(&time.nanos) {
        return Err(FieldError::new(
            field,
            format!("nanos {} is outside 0..999999999", time.nanos),
        ));
    }
    time.seconds
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(i64::from(time.nanos)))
        .map(Some)
        .ok_or_else(|| FieldError::new(field, "is out of range (years 1678 to 2262)"))
}

// ---------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------

/// Reads a REST query string strictly: every parameter must be one of
/// `accepted`, given at most once. Empty values count as absent (`?actor_id=` is no
/// filter), as the URL template sends them.
pub fn rest_parameters(
    query_string: &str,
    accepted: &[&'static str],
) -> Result<BTreeMap<&'static str, String>, ParamError> {
    /// Longest parameter name echoed back in an error.
    const NAME_SHOWN_CHARS_MAX: usize = 64;
    let mut values: BTreeMap<&'static str, String> = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query_string.as_bytes()) {
        let Some(known) = accepted.iter().find(|known| **known == name) else {
            let shown: String = name.chars().take(NAME_SHOWN_CHARS_MAX).collect();
            let message = if accepted.is_empty() {
                "is not a known parameter; this route takes none".to_string()
            } else {
                format!(
                    "is not a known parameter; accepted: {}",
                    accepted.join(", ")
                )
            };
            return Err(ParamError {
                parameter: shown,
                message,
            });
        };
        if values.contains_key(known) {
            return Err(ParamError {
                parameter: known.to_string(),
                message: "is given more than once; give it once".to_string(),
            });
        }
        values.insert(known, value.into_owned());
    }
    values.retain(|_, value| !value.is_empty());
    Ok(values)
}

/// Parses `GET /api/v1/tenants/{tenant}/audit-logs/count?…`: the filters only.
pub fn rest_count_input(tenant: &str, query_string: &str) -> Result<QueryInput, ParamError> {
    rest_parameters(query_string, &REST_PARAMETERS[..REST_COUNT_PARAMETERS])?;
    rest_input(tenant, query_string)
}

/// Parses `GET /api/v1/tenants/{tenant}/audit-logs?…`. Unlike gRPC, `limit=0` is an
/// error here: REST can leave the parameter out to get the default.
pub fn rest_input(tenant: &str, query_string: &str) -> Result<QueryInput, ParamError> {
    let tenant_id = validate_tenant_id(tenant)?;
    let mut values = rest_parameters(query_string, &REST_PARAMETERS)?;
    let mut take = |name: &'static str| values.remove(name).unwrap_or_default();
    let actor_kind = rest_enum(
        "actor_type",
        &take("actor_type"),
        &[
            ("user", ActorKind::User),
            ("service", ActorKind::Service),
            ("system", ActorKind::System),
        ],
    )?;
    let outcome = rest_enum(
        "result",
        &take("result"),
        &[
            ("success", Outcome::Success),
            ("failure", Outcome::Failure),
            ("denied", Outcome::Denied),
        ],
    )?;
    let filters = Filters {
        actor_id: actor_id_filter(&take("actor_id"))?,
        actor_kind,
        action: action_filter(&take("action"))?,
        resource_type: resource_type_filter(&take("resource_type"))?,
        resource_id: resource_id_filter(&take("resource_id"))?,
        outcome,
        request_id: request_id_filter(&take("request_id"))?,
        start_time_ns: rest_time("start_time", &take("start_time"))?,
        end_time_ns: rest_time("end_time", &take("end_time"))?,
    };
    filters.check()?;
    let limit = rest_limit(&take("limit"))?;
    let order = match take("order").as_str() {
        "" | "desc" => Order::NewestFirst,
        "asc" => Order::OldestFirst,
        other => {
            return Err(ParamError {
                parameter: "order".into(),
                message: format!(
                    "{:?} is not an order; use desc (newest first, the default) or asc",
                    shown(other)
                ),
            })
        }
    };
    let consistency = Consistency::from_rest(&take("consistency"))?;
    Ok(QueryInput {
        tenant_id,
        filters,
        limit,
        order,
        cursor: take("cursor"),
        consistency,
    })
}

/// An enum parameter by name, any case; an absent (empty) parameter is no filter.
fn rest_enum<T: Copy>(
    parameter: &'static str,
    text: &str,
    names: &[(&'static str, T)],
) -> Result<Option<T>, ParamError> {
    if text.is_empty() {
        return Ok(None);
    }
    for (name, value) in names {
        if text.eq_ignore_ascii_case(name) {
            return Ok(Some(*value));
        }
    }
    let accepted: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    Err(ParamError {
        parameter: parameter.to_string(),
        message: format!(
            "{:?} is not accepted; use one of {}",
            shown(text),
            accepted.join(", ")
        ),
    })
}

/// RFC 3339, e.g. `2025-01-01T00:00:00Z` or with a fraction and an offset.
fn rest_time(parameter: &'static str, text: &str) -> Result<Option<i64>, ParamError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| ParamError {
        parameter: parameter.to_string(),
        message: format!(
            "{:?} {why}; use an RFC 3339 time such as 2025-01-01T00:00:00Z or \
             2025-01-01T00:00:02.719812+01:00",
            shown(text)
        ),
    };
    let time = DateTime::parse_from_rfc3339(text).map_err(|_| bad("is not an RFC 3339 time"))?;
    time.timestamp_nanos_opt()
        .map(Some)
        .ok_or_else(|| bad("is out of range (years 1678 to 2262)"))
}

fn rest_limit(text: &str) -> Result<usize, ParamError> {
    if text.is_empty() {
        return Ok(LIMIT_DEFAULT);
    }
    let bad = |message: String| ParamError {
        parameter: "limit".into(),
        message,
    };
    let limit: u64 = text.parse().map_err(|_| {
        bad(format!(
            "{:?} is not a whole number; use 1 to {LIMIT_MAX} (default {LIMIT_DEFAULT})",
            shown(text)
        ))
    })?;
    if limit == 0 || limit > LIMIT_MAX as u64 {
        return Err(bad(format!(
            "{limit} is out of range; use 1 to {LIMIT_MAX}, or leave it out for {LIMIT_DEFAULT}"
        )));
    }
    Ok(limit as usize)
}

/// A user's value, cut short for an error message.
fn shown(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 64;
    text.chars().take(SHOWN_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter_of(query_string: &str) -> String {
        rest_input("ten_1", query_string).unwrap_err().parameter
    }

    #[test]
    fn rest_parses_every_parameter() {
        let input = rest_input(
            "ten_1",
            "actor_id=usr_1&actor_type=USER&action=auth.*&resource_type=doc&resource_id=d%201\
             &result=failure&request_id=r&start_time=2025-01-01T00:00:00Z\
             &end_time=2025-01-02T00:00:00.5%2B01:00&limit=7&order=asc&cursor=abc",
        )
        .unwrap();
        assert_eq!(input.tenant_id, "ten_1");
        let filters = &input.filters;
        assert_eq!(filters.actor_id.as_deref(), Some("usr_1"));
        assert_eq!(filters.actor_kind, Some(ActorKind::User));
        assert_eq!(
            filters.action,
            Some(crate::query::ActionMatch::Prefix("auth.".into()))
        );
        assert_eq!(filters.resource_id.as_deref(), Some("d 1"));
        assert_eq!(filters.outcome, Some(Outcome::Failure));
        assert_eq!(filters.start_time_ns, Some(1_735_689_600_000_000_000));
        assert_eq!(
            filters.end_time_ns,
            Some(1_735_689_600_000_000_000 + 23 * 3_600_000_000_000 + 500_000_000)
        );
        assert_eq!(input.limit, 7);
        assert_eq!(input.order, Order::OldestFirst);
        assert_eq!(input.cursor, "abc");
    }

    #[test]
    fn rest_defaults_and_empty_values() {
        let input = rest_input("ten_1", "actor_id=&action=&limit=").unwrap();
        assert_eq!(input.filters, Filters::default());
        assert_eq!(input.limit, LIMIT_DEFAULT);
        assert_eq!(input.order, Order::NewestFirst);
        assert!(input.cursor.is_empty());
    }

    #[test]
    fn rest_errors_name_the_parameter() {
        assert_eq!(parameter_of("actor=usr_1"), "actor");
        assert_eq!(parameter_of("actor_id=a&actor_id=b"), "actor_id");
        assert_eq!(parameter_of("start_time=yesterday"), "start_time");
        assert_eq!(parameter_of("start_time=2025-01-01"), "start_time");
        assert_eq!(
            parameter_of("start_time=2025-01-02T00:00:00Z&end_time=2025-01-01T00:00:00Z"),
            "end_time"
        );
        assert_eq!(parameter_of("limit=0"), "limit");
        assert_eq!(parameter_of("limit=10000"), "limit");
        assert_eq!(parameter_of("limit=ten"), "limit");
        assert_eq!(parameter_of("order=newest"), "order");
        assert_eq!(parameter_of("result=ok"), "result");
        assert_eq!(parameter_of("actor_type=robot"), "actor_type");
        assert_eq!(parameter_of("action=Auth.Login"), "action");
        assert_eq!(
            rest_input("bad tenant", "").unwrap_err().parameter,
            "tenant"
        );
    }

    #[test]
    fn grpc_defaults_and_paths() {
        let input = grpc_input(v1::QueryRequest {
            tenant_id: "ten_1".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(input.limit, LIMIT_DEFAULT);
        assert_eq!(input.order, Order::NewestFirst);
        assert_eq!(input.filters, Filters::default());

        let bad_time = grpc_input(v1::QueryRequest {
            tenant_id: "ten_1".into(),
            filter: Some(v1::QueryFilter {
                start_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: -1,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(bad_time.field, "start_time");
        assert!(grpc_invalid(&bad_time)
            .message()
            .starts_with("filter.start_time: "));

        let too_many = grpc_input(v1::QueryRequest {
            tenant_id: "ten_1".into(),
            limit: 1_001,
            ..Default::default()
        })
        .unwrap_err();
        assert!(grpc_invalid(&too_many).message().starts_with("limit: "));
    }
}
