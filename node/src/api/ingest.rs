//! Ingest: the one path a batch of events takes into the ledger, whichever surface it
//! came by (gRPC's `Record`, `RecordBatch` and `RecordStream`; a harness that drives the
//! node's API). In steps:
//!
//! 1. check the batch's size (1 to `BATCH_EVENTS_MAX` events);
//! 2. in a cluster, set aside the events of shards led by another node, grouped by that
//!    node (unless the batch was forwarded here already: it is served here);
//! 3. validate every other event (a bad event rejects that event only, naming its
//!    index, field and rule) and route it to its shard on this node;
//! 4. submit each shard's part to its batcher (never waits: a full queue answers Busy),
//!    while the set-aside parts go to their leaders, one call per leader node;
//! 5. merge each event's receipt or error back in request order.
//!
//! The answer is the wire's `RecordBatchResponse`: a forwarded part comes back in that
//! form, and every surface answers with it. No transport type is in the signature, so
//! a caller needs no gRPC request to ingest.

use std::collections::BTreeMap;

use tokio_stream::StreamExt;
use tonic::{Request, Status};
use trail_proto::v1;

use crate::ledger::{
    validate_event, validate_tenant_id, ApplyReceipt, EventRecord, FieldError, BATCH_EVENTS_MAX,
};
use crate::node::Node;
use crate::shard::IngestError;

use super::convert::to_receipt;
use super::forward;

/// A batch that is refused whole (every other problem is an event's own outcome).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("events: the batch is empty; send 1 to 10000 events")]
    Empty,
    #[error(
        "events: the batch has {events} events; at most {BATCH_EVENTS_MAX} are accepted per \
         request"
    )]
    TooManyEvents { events: usize },
    /// The task that called the other leaders failed (it panicked): the outcomes of
    /// their parts are unknown.
    #[error("forwarding task failed")]
    ForwardingFailed,
}

/// A recorded batch: one outcome per event, in request order, and the endpoint of the
/// one leader every event was forwarded to, if so (named in `trail-leader`, so the SDK
/// goes there next time).
#[derive(Debug)]
pub struct Recorded {
    pub response: v1::RecordBatchResponse,
    pub sole_leader: Option<String>,
}

/// Records a batch; never fails as a whole except for a malformed batch. In a
/// cluster, the events of shards led elsewhere go to their leaders (one call per
/// leader node, unless the batch was `forwarded` here already), with the caller's
/// `authorization` (its token, which each leader checks again). The caller has
/// authorized the batch's tenants (`api/auth.rs`).
pub async fn record_batch(
    node: &Node,
    events: Vec<v1::Event>,
    forwarded: bool,
    authorization: Option<&str>,
) -> Result<Recorded, BatchError> {
    if events.is_empty() {
        return Err(BatchError::Empty);
    }
    if events.len() > BATCH_EVENTS_MAX {
        return Err(BatchError::TooManyEvents {
            events: events.len(),
        });
    }
    let now_ns = node.clock.now_ns();
    let mut outcomes: Vec<Option<v1::record_outcome::Outcome>> = vec![None; events.len()];
    // Shard -> (request positions, events), in request order within each shard.
    let mut by_shard: BTreeMap<u32, (Vec<usize>, Vec<EventRecord>)> = BTreeMap::new();
    // Leader node -> (request positions, events), for shards led elsewhere.
    let mut by_leader: BTreeMap<u64, (forward::Target, Vec<usize>, Vec<v1::Event>)> =
        BTreeMap::new();
    for (index, mut event) in events.into_iter().enumerate() {
        if node.forwarder.is_some() && validate_tenant_id(&event.tenant_id).is_ok() {
            if let Some(target) = forward::target(node, &event.tenant_id, forwarded) {
                let entry = by_leader
                    .entry(target.node)
                    .or_insert_with(|| (target, Vec::new(), Vec::new()));
                entry.1.push(index);
                entry.2.push(event);
                continue;
            }
        }
        match validate_event(&mut event, now_ns, || ulid::Ulid::new().to_string()) {
            Err(error) => outcomes[index] = Some(rejected(index, &event.event_id, &error)),
            Ok(record) => match node.router.hosted_shard_for(&record.tenant_id) {
                Ok(shard) => {
                    let entry = by_shard.entry(shard).or_default();
                    entry.0.push(index);
                    entry.1.push(record);
                }
                Err(error) => {
                    outcomes[index] = Some(v1::record_outcome::Outcome::Error(event_error(
                        index,
                        &record.event_id,
                        &Status::from(error),
                    )));
                }
            },
        }
    }

    let sole_leader = match by_leader.values().next() {
        Some((target, positions, _))
            if by_leader.len() == 1 && positions.len() == outcomes.len() =>
        {
            Some(target.endpoint.clone())
        }
        _ => None,
    };
    if let Some(forwarder) = &node.forwarder {
        let forwarded_events: usize = by_leader
            .values()
            .map(|(_, positions, _)| positions.len())
            .sum();
        forwarder.counters.batch_events.fetch_add(
            forwarded_events as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    let forwarded_parts = by_leader.len();
    let authorization: Option<tonic::metadata::AsciiMetadataValue> =
        authorization.and_then(|value| value.parse().ok());
    let remote = by_leader
        .into_values()
        .map(|(target, positions, events)| {
            let mut request =
                forward::onward(node, Request::new(v1::RecordBatchRequest { events }));
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert(super::auth::AUTHORIZATION, value.clone());
            }
            async move {
                let node = target.node;
                let mut client = target.client;
                let response = client.record_batch(request).await;
                (node, positions, response)
            }
        })
        .collect::<futures::stream::FuturesUnordered<_>>()
        .collect::<Vec<_>>();

    let mut waiting = Vec::with_capacity(by_shard.len());
    let mut retry_after_ms = 0u32;
    for (shard, (positions, records)) in by_shard {
        let (positions, records) = charge_quotas(
            node,
            positions,
            records,
            now_ns,
            &mut outcomes,
            &mut retry_after_ms,
        );
        if records.is_empty() {
            continue;
        }
        let ids: Vec<(String, String)> = records
            .iter()
            .map(|record| (record.event_id.clone(), record.tenant_id.clone()))
            .collect();
        // Submitting never waits: a full queue answers at once (Busy).
        let submitted = match node.router.local(shard) {
            Some(handle) => handle.submit(records),
            // Routed above, removed since (a shard moved away): the retry finds
            // where it went.
            None => Err(IngestError::Unavailable {
                shard,
                reason: "the shard left this node while the batch was routed".into(),
            }),
        };
        waiting.push((shard, positions, ids, submitted));
    }
    // Forwarded parts run beside the local ones; a call this node serves alone (a
    // single node's every call) spawns nothing.
    let remote = (forwarded_parts > 0).then(|| tokio::spawn(remote));
    for (shard, positions, ids, submitted) in waiting {
        let reply = match submitted {
            Err(error) => Err(error),
            Ok(receiver) => receiver.await.unwrap_or_else(|_| {
                Err(IngestError::Unavailable {
                    shard,
                    reason: "shard stopped before acknowledging; outcome unknown".into(),
                })
            }),
        };
        match reply {
            Ok(receipts) => {
                for ((position, (event_id, tenant_id)), receipt) in
                    positions.into_iter().zip(ids).zip(receipts)
                {
                    outcomes[position] =
                        Some(receipt_outcome(position, event_id, tenant_id, receipt));
                }
            }
            Err(error) => {
                if let IngestError::Busy {
                    retry_after_ms: hint,
                    ..
                } = &error
                {
                    retry_after_ms = retry_after_ms.max(*hint);
                }
                for (position, (event_id, _)) in positions.into_iter().zip(ids) {
                    outcomes[position] = Some(failed(position, &event_id, &error));
                }
            }
        }
    }

    let remote = match remote {
        Some(task) => task.await.map_err(|_| BatchError::ForwardingFailed)?,
        None => Vec::new(),
    };
    for (node, positions, response) in remote {
        match response {
            Ok(response) => {
                let response = response.into_inner();
                retry_after_ms = retry_after_ms.max(response.retry_after_ms);
                for (position, outcome) in positions.into_iter().zip(response.outcomes) {
                    let mut outcome = outcome.outcome;
                    if let Some(v1::record_outcome::Outcome::Error(error)) = &mut outcome {
                        error.index = position as u32;
                    }
                    outcomes[position] = outcome;
                }
            }
            Err(status) => {
                let status = forward::unreachable_leader(node, status);
                for position in positions {
                    outcomes[position] = Some(v1::record_outcome::Outcome::Error(event_error(
                        position, "", &status,
                    )));
                }
            }
        }
    }

    let mut response = v1::RecordBatchResponse {
        retry_after_ms,
        ..Default::default()
    };
    for (index, outcome) in outcomes.into_iter().enumerate() {
        // A leader that answered fewer outcomes than it was sent broke the protocol.
        let outcome = outcome.unwrap_or_else(|| {
            v1::record_outcome::Outcome::Error(event_error(
                index,
                "",
                &Status::unavailable("the shard leader gave no outcome for this event; retry"),
            ))
        });
        match &outcome {
            v1::record_outcome::Outcome::Receipt(receipt) if receipt.deduplicated => {
                response.deduplicated += 1
            }
            v1::record_outcome::Outcome::Receipt(_) => response.accepted += 1,
            v1::record_outcome::Outcome::Error(_) => response.rejected += 1,
        }
        response.outcomes.push(v1::RecordOutcome {
            outcome: Some(outcome),
        });
    }
    Ok(Recorded {
        response,
        sole_leader,
    })
}

/// The outcome of an event the shard applied: its receipt, or ALREADY_EXISTS when its
/// id was recorded before with another body (a reuse of the id, not a retry: answering
/// `deduplicated` would tell the producer that this event is in the ledger).
fn receipt_outcome(
    position: usize,
    event_id: String,
    tenant_id: String,
    receipt: ApplyReceipt,
) -> v1::record_outcome::Outcome {
    if receipt.conflict {
        return v1::record_outcome::Outcome::Error(v1::EventError {
            index: position as u32,
            message: format!(
                "event_id {event_id:?} was recorded before with a different event (stream {}, \
                 seq {}, leaf hash {}): a retry must send the same event; a new event needs \
                 a new id",
                receipt.stream,
                receipt.seq,
                hex::encode(receipt.leaf_hash)
            ),
            event_id,
            code: "ALREADY_EXISTS".into(),
            field: "event_id".into(),
        });
    }
    v1::record_outcome::Outcome::Receipt(to_receipt(event_id, tenant_id, receipt))
}

/// Charges each tenant of a shard's part of a batch against its ingest quota
/// (`access/quota.rs`); the events of a tenant over quota are refused here, with
/// RESOURCE_EXHAUSTED and the retry hint, and the rest go on.
fn charge_quotas(
    node: &Node,
    positions: Vec<usize>,
    records: Vec<EventRecord>,
    now_ns: i64,
    outcomes: &mut [Option<v1::record_outcome::Outcome>],
    retry_after_ms: &mut u32,
) -> (Vec<usize>, Vec<EventRecord>) {
    if node.quotas.default_quota() == crate::access::quota::Quota::UNLIMITED {
        return (positions, records);
    }
    // A call's events come from a few tenants: a short list beats a map here.
    let mut per_tenant: Vec<(&str, u64, u64)> = Vec::new();
    for record in &records {
        let bytes = record.size_bytes() as u64;
        match per_tenant
            .iter_mut()
            .find(|(tenant, _, _)| *tenant == record.tenant_id)
        {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += bytes;
            }
            None => per_tenant.push((&record.tenant_id, 1, bytes)),
        }
    }
    let mut refused: BTreeMap<String, Status> = BTreeMap::new();
    for (tenant, events, bytes) in per_tenant {
        if let Err(over) = node.quotas.charge(tenant, events, bytes, now_ns) {
            *retry_after_ms = (*retry_after_ms).max(over.retry_after_ms);
            refused.insert(
                tenant.to_string(),
                Status::resource_exhausted(over.to_string()),
            );
        }
    }
    if refused.is_empty() {
        return (positions, records);
    }
    let mut kept = (Vec::new(), Vec::new());
    for (position, record) in positions.into_iter().zip(records) {
        match refused.get(&record.tenant_id) {
            Some(status) => {
                outcomes[position] = Some(v1::record_outcome::Outcome::Error(event_error(
                    position,
                    &record.event_id,
                    status,
                )));
            }
            None => {
                kept.0.push(position);
                kept.1.push(record);
            }
        }
    }
    kept
}

fn rejected(index: usize, event_id: &str, error: &FieldError) -> v1::record_outcome::Outcome {
    v1::record_outcome::Outcome::Error(v1::EventError {
        index: index as u32,
        event_id: event_id.to_string(),
        code: "INVALID_ARGUMENT".into(),
        field: error.field.to_string(),
        message: error.to_string(),
    })
}

/// An event's error from a status (routing, forwarding).
fn event_error(index: usize, event_id: &str, status: &Status) -> v1::EventError {
    let code = match status.code() {
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        _ => "UNAVAILABLE",
    };
    v1::EventError {
        index: index as u32,
        event_id: event_id.to_string(),
        code: code.into(),
        field: String::new(),
        message: status.message().to_string(),
    }
}

fn failed(index: usize, event_id: &str, error: &IngestError) -> v1::record_outcome::Outcome {
    let code = match error {
        IngestError::Busy { .. } => "RESOURCE_EXHAUSTED",
        IngestError::Unavailable { .. } => "UNAVAILABLE",
    };
    v1::record_outcome::Outcome::Error(v1::EventError {
        index: index as u32,
        event_id: event_id.to_string(),
        code: code.into(),
        field: String::new(),
        message: error.to_string(),
    })
}
