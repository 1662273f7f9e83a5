//! Conversions and request helpers the gRPC surfaces share (`grpc.rs`, `ingest.rs`,
//! `query.rs`, `proofs.rs`): stored events and receipts to wire messages, read, barrier
//! and event errors to statuses, the tenant, event id and consistency arguments, and
//! who sent a read (from the request's headers).

use tonic::{Request, Status};
use trail_proto::v1;

use crate::ledger::validate::validate_event_id;
use crate::ledger::{validate_tenant_id, ApplyReceipt};
use crate::node::Node;
use crate::query::ReadError;
use crate::shard::reader::ReadEvent;
use crate::shard::ReadBarrierError;

use super::audit::ReadBy;
use super::forward;
use super::headers::ACTOR_HEADER;
use super::params::Consistency;
use crate::access::Principal;

pub(super) fn to_receipt(
    event_id: String,
    tenant_id: String,
    receipt: ApplyReceipt,
) -> v1::Receipt {
    v1::Receipt {
        event_id,
        tenant_id,
        stream: receipt.stream,
        seq: receipt.seq,
        leaf_hash: receipt.leaf_hash.to_vec(),
        deduplicated: receipt.deduplicated,
        ingested_at_ns: receipt.ingested_at_ns,
    }
}

/// Who sent a read, for its audit record.
pub(super) fn read_by<T>(node: &Node, request: &Request<T>, principal: &Principal) -> ReadBy {
    let metadata = request.metadata();
    let text = |key: &str| metadata.get(key).and_then(|value| value.to_str().ok());
    ReadBy::new(
        principal,
        text(ACTOR_HEADER),
        forward::client_addr(node, request),
        text("user-agent"),
    )
}

/// A read that could not pass its shard's linearizable read barrier: retryable.
pub(super) fn barrier_status(error: ReadBarrierError) -> Status {
    Status::unavailable(error.to_string())
}

pub(super) fn read_status(error: ReadError) -> Status {
    // Corruption is reported loudly in the node's log; the caller learns only that the
    // record can not be served.
    tracing::error!(%error, "read failed");
    match error {
        ReadError::Storage(_) => Status::unavailable("storage read failed; retry"),
        ReadError::Corrupt { .. } => {
            Status::data_loss("a stored record failed its integrity checks")
        }
        error @ ReadError::IndexBehind { .. } => Status::unavailable(error.to_string()),
        error @ ReadError::TooBroad { .. } => Status::resource_exhausted(error.to_string()),
    }
}

pub(super) fn to_stored_event(read: ReadEvent) -> v1::StoredEvent {
    let stored = read.stored;
    let event = stored.event;
    v1::StoredEvent {
        event: Some(v1::Event {
            event_id: event.event_id,
            tenant_id: event.tenant_id,
            actor: Some(v1::Actor {
                r#type: event.actor_kind as i32,
                id: event.actor_id,
                email: event.actor_email,
                name: event.actor_name,
            }),
            action: event.action,
            resource: if event.resource_type.is_empty() {
                None
            } else {
                Some(v1::Resource {
                    r#type: event.resource_type,
                    id: event.resource_id,
                })
            },
            result: event.outcome as i32,
            occurred_at: Some(timestamp(event.occurred_at_ns)),
            request_id: event.request_id,
            session_id: event.session_id,
            ip_address: event.ip_address,
            user_agent: event.user_agent,
            metadata_json: event.metadata_json,
            subject_id: event.subject_id,
        }),
        stream: stored.stream,
        seq: stored.seq,
        ingested_at: Some(timestamp(stored.ingested_at_ns)),
        leaf_hash: read.leaf_hash.to_vec(),
        log_index: 0,
    }
}

pub(super) fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: ns.rem_euclid(1_000_000_000) as i32,
    }
}

/// A tenant to read: a producer's tenant id, or one of the node's own streams
/// (`_access`, `_cluster`), which keys of every tenant may read and verify like any.
pub(super) fn tenant_argument(tenant_id: &str) -> Result<String, Status> {
    if crate::ledger::routing::is_reserved_tenant(tenant_id) {
        return Ok(tenant_id.to_string());
    }
    validate_tenant_id(tenant_id).map_err(|error| Status::invalid_argument(error.to_string()))
}

/// The status of a single event's error, for `Record` (one event, one answer).
pub(super) fn status_of_event_error(error: &v1::EventError) -> Status {
    let status = match error.code.as_str() {
        "INVALID_ARGUMENT" => Status::invalid_argument(error.message.clone()),
        "RESOURCE_EXHAUSTED" => Status::resource_exhausted(error.message.clone()),
        "FAILED_PRECONDITION" => Status::failed_precondition(error.message.clone()),
        "ALREADY_EXISTS" => Status::already_exists(error.message.clone()),
        _ => Status::unavailable(error.message.clone()),
    };
    status
}

/// An event id a read names: ingest's rule (an id no event can have never becomes a
/// storage key), INVALID_ARGUMENT naming `event_id`.
pub(super) fn event_id_argument(event_id: &str) -> Result<(), Status> {
    validate_event_id("event_id", event_id)
        .map_err(|error| Status::invalid_argument(error.to_string()))
}

/// A read's `consistency` field, INVALID_ARGUMENT naming it when unknown.
pub(super) fn consistency_argument(value: i32) -> Result<Consistency, Status> {
    Consistency::from_wire(value).map_err(|error| Status::invalid_argument(error.to_string()))
}
