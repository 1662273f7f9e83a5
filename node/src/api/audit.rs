//! Reading the audit log is itself audited: each query, count and export of a tenant's
//! events appends an `audit_log.read` / `audit_log.export` event to that tenant's own
//! log (who, which filter, how many), through the same validation, group commit and
//! Raft log as any event. The read answers only once its record is acknowledged: a read
//! that cannot be recorded fails (UNAVAILABLE) rather than go unrecorded.
//!
//! Who: the API key the request authenticated with (its id as the actor id, its name
//! as the actor name), its peer address and user agent. What the request declares
//! (`x-trail-actor` header or gRPC metadata) is kept beside it as `on_behalf_of` in the
//! record's metadata, never instead of the key. The filter values are the tenant's own
//! data and stay in the tenant's log; they are never written to the node's log.

use serde_json::{json, Value};
use trail_proto::v1;

use crate::access::Principal;
use crate::ledger::validate::{validate_event, ID_BYTES_MAX};
use crate::ledger::{ActorKind, ApplyReceipt, Outcome};
use crate::node::Node;
use crate::query::{ActionMatch, Filters};
use crate::shard::batcher::IngestError;

const USER_AGENT_BYTES_MAX: usize = 512;

/// Who read: the key, and what the request says of itself.
#[derive(Debug, Clone, Default)]
pub struct ReadBy {
    /// The key's id.
    pub actor_id: String,
    /// The key's name.
    pub actor_name: String,
    /// The caller's own claim (`x-trail-actor`), if it made one.
    pub on_behalf_of: Option<String>,
    pub ip_address: String,
    pub user_agent: String,
}

impl ReadBy {
    /// From the caller's key and the request's headers: header values that are
    /// missing, too long or not printable are dropped, so a bad header never turns a
    /// read into an error.
    pub fn new(
        principal: &Principal,
        actor: Option<&str>,
        peer: Option<std::net::SocketAddr>,
        user_agent: Option<&str>,
    ) -> ReadBy {
        let clean = |value: Option<&str>, max: usize| {
            value
                .filter(|value| {
                    !value.is_empty()
                        && value.len() <= max
                        && value.chars().all(|c| !c.is_control())
                })
                .map(str::to_string)
        };
        ReadBy {
            actor_id: principal.key_id.clone(),
            actor_name: principal
                .name
                .chars()
                .take(ID_BYTES_MAX)
                .collect::<String>(),
            on_behalf_of: clean(actor, ID_BYTES_MAX),
            ip_address: peer.map(|peer| peer.ip().to_string()).unwrap_or_default(),
            user_agent: clean(user_agent, USER_AGENT_BYTES_MAX).unwrap_or_default(),
        }
    }
}

/// The read kinds that are recorded.
#[derive(Debug, Clone, Copy)]
pub enum ReadKind {
    Query,
    Count,
    Export,
}

impl ReadKind {
    fn action(self) -> &'static str {
        match self {
            ReadKind::Query | ReadKind::Count => "audit_log.read",
            ReadKind::Export => "audit_log.export",
        }
    }

    fn name(self) -> &'static str {
        match self {
            ReadKind::Query => "query",
            ReadKind::Count => "count",
            ReadKind::Export => "export",
        }
    }
}

/// A filter as the audit record shows it.
pub fn describe(filters: &Filters) -> Value {
    let mut shown = serde_json::Map::new();
    let mut put = |name: &str, value: Value| {
        shown.insert(name.to_string(), value);
    };
    if let Some(value) = &filters.actor_id {
        put("actor_id", json!(value));
    }
    if let Some(kind) = filters.actor_kind {
        put("actor_type", json!(format!("{kind:?}").to_lowercase()));
    }
    match &filters.action {
        Some(ActionMatch::Exact(action)) => put("action", json!(action)),
        Some(ActionMatch::Prefix(prefix)) => put("action", json!(format!("{prefix}*"))),
        None => {}
    }
    if let Some(value) = &filters.resource_type {
        put("resource_type", json!(value));
    }
    if let Some(value) = &filters.resource_id {
        put("resource_id", json!(value));
    }
    if let Some(outcome) = filters.outcome {
        put("result", json!(format!("{outcome:?}").to_lowercase()));
    }
    if let Some(value) = &filters.request_id {
        put("request_id", json!(value));
    }
    if let Some(ns) = filters.start_time_ns {
        put("start_time_ns", json!(ns));
    }
    if let Some(ns) = filters.end_time_ns {
        put("end_time_ns", json!(ns));
    }
    Value::Object(shown)
}

/// Appends the record of a read to the tenant's log and waits for its ack: its receipt,
/// or `None` when the node does not record reads. `Err` with a reason the caller can
/// show when it could not be recorded.
pub async fn record_read(
    node: &Node,
    tenant_id: &str,
    kind: ReadKind,
    by: &ReadBy,
    details: Value,
) -> Result<Option<(String, ApplyReceipt)>, &'static str> {
    if !node.config.audit_reads {
        return Ok(None);
    }
    let mut metadata = json!({ "read": kind.name() });
    if let (Value::Object(target), Some(claimed)) = (&mut metadata, &by.on_behalf_of) {
        target.insert("on_behalf_of".into(), json!(claimed));
    }
    if let (Value::Object(target), Value::Object(source)) = (&mut metadata, details) {
        target.extend(source);
    }
    let now_ns = node.clock.now_ns();
    let mut event = v1::Event {
        tenant_id: tenant_id.to_string(),
        actor: Some(v1::Actor {
            r#type: v1::ActorType::Service as i32,
            id: by.actor_id.clone(),
            name: by.actor_name.clone(),
            ..v1::Actor::default()
        }),
        action: kind.action().to_string(),
        resource: Some(v1::Resource {
            r#type: "audit_log".into(),
            id: tenant_id.to_string(),
        }),
        result: v1::Result::Success as i32,
        occurred_at: Some(prost_types::Timestamp {
            seconds: now_ns.div_euclid(1_000_000_000),
            nanos: now_ns.rem_euclid(1_000_000_000) as i32,
        }),
        ip_address: by.ip_address.clone(),
        user_agent: by.user_agent.clone(),
        metadata_json: metadata.to_string(),
        ..v1::Event::default()
    };
    if let Some(target) = super::forward::target(node, tenant_id, false) {
        // A replica here answered an eventual read; its record is appended by the leader.
        let event_id = ulid::Ulid::new().to_string();
        event.event_id.clone_from(&event_id);
        return record_on_leader(node, target, event)
            .await
            .map(|receipt| Some((event_id, receipt)));
    }
    let record =
        validate_event(&mut event, now_ns, || ulid::Ulid::new().to_string()).map_err(|error| {
            tracing::error!(
                field = error.field,
                "a read's audit record failed validation"
            );
            "the read could not be recorded in the audit log"
        })?;
    debug_assert_eq!(record.actor_kind, ActorKind::Service);
    debug_assert_eq!(record.outcome, Outcome::Success);
    let event_id = record.event_id.clone();
    let handle = node
        .router
        .shard_for(tenant_id)
        .map_err(|_| "the tenant's shard is not served by this node; retry")?;
    let receiver = handle.submit(vec![record]).map_err(|error| match error {
        IngestError::Busy { .. } => "the node is busy and could not record this read; retry",
        _ => "the read could not be recorded in the audit log; retry",
    })?;
    match receiver.await {
        Ok(Ok(mut receipts)) if receipts.len() == 1 => {
            Ok(Some((event_id, receipts.pop().expect("one receipt"))))
        }
        _ => Err("the read could not be recorded in the audit log; retry"),
    }
}

/// Appends a read's record through the shard's leader (a `Record` call marked as
/// forwarded), for a read that a follower answered.
async fn record_on_leader(
    node: &Node,
    target: super::forward::Target,
    event: v1::Event,
) -> Result<ApplyReceipt, &'static str> {
    let mut request = tonic::Request::new(v1::RecordRequest { event: Some(event) });
    // The node records this itself: with the nodes' own credential, not the reader's
    // (whose key may not ingest).
    if let Some(value) = node
        .forwarder
        .as_ref()
        .and_then(|forwarder| forwarder.node_authorization().parse().ok())
    {
        request
            .metadata_mut()
            .insert(super::auth::AUTHORIZATION, value);
    }
    let response = super::forward::call(node, target, request, |mut client, request| async move {
        client.record(request).await
    })
    .await
    .map_err(|_| "the leader could not record this read in the audit log; retry")?;
    let receipt = response
        .into_inner()
        .receipt
        .ok_or("the leader answered the read's record without a receipt; retry")?;
    Ok(ApplyReceipt {
        stream: receipt.stream,
        seq: receipt.seq,
        leaf_hash: receipt
            .leaf_hash
            .try_into()
            .map_err(|_| "the leader's receipt for the read's record is malformed")?,
        deduplicated: receipt.deduplicated,
        conflict: false,
        ingested_at_ns: receipt.ingested_at_ns,
    })
}
