//! Reads of one shard's committed state, through the store's typed reads
//! (`storage::shard_store`).
//!
//! Single-replica groups acknowledge only after apply, so every acknowledged event is
//! visible here (read-your-writes). Replicated groups add a read-index check on the
//! leader before reading (cluster work).

use crate::ledger::{leaf_hash, LeafHash, StoredEvent, TenantState};
use crate::query::ReadError;
use crate::storage::event_codec::Canonical;
use crate::storage::{ShardKeyspaces, StoredValue};

/// Events one `tail` call returns at most.
pub const TAIL_LIMIT_MAX: usize = 1_000;

/// A stored event with its leaf hash, as reads return it.
#[derive(Debug, Clone)]
pub struct ReadEvent {
    pub stored: StoredEvent,
    pub leaf_hash: LeafHash,
}

pub fn tenant_state(
    keyspaces: &ShardKeyspaces,
    tenant_id: &str,
) -> Result<Option<TenantState>, ReadError> {
    match keyspaces.tenant_record(tenant_id)? {
        None => Ok(None),
        Some(bytes) => TenantState::decode(&bytes)
            .map(Some)
            .ok_or_else(|| ReadError::Corrupt {
                location: format!("tenant {tenant_id}"),
                reason: "the tenant state does not decode".into(),
            }),
    }
}

pub fn get_event(
    keyspaces: &ShardKeyspaces,
    tenant_id: &str,
    event_id: &str,
) -> Result<Option<ReadEvent>, ReadError> {
    let Some(tenant) = tenant_state(keyspaces, tenant_id)? else {
        return Ok(None);
    };
    let Some((stream_no, seq)) = keyspaces.event_position(tenant.tenant_no, event_id)? else {
        return Ok(None);
    };
    let event = read_event(keyspaces, stream_no, seq)?;
    // A dedup entry must point at the event it names, in the tenant it names.
    if event.stored.event.tenant_id != tenant_id || event.stored.event.event_id != event_id {
        return Err(ReadError::Corrupt {
            location: format!("stream {stream_no} seq {seq}"),
            reason: "dedup entry points at another event".into(),
        });
    }
    Ok(Some(event))
}

/// Events of the tenant's stream with `seq > after_seq`, in stream order.
pub fn tail(
    keyspaces: &ShardKeyspaces,
    tenant_id: &str,
    after_seq: u64,
    limit: usize,
) -> Result<(Vec<ReadEvent>, u64), ReadError> {
    let Some(tenant) = tenant_state(keyspaces, tenant_id)? else {
        return Ok((Vec::new(), 0));
    };
    let last_seq = tenant.next_seq - 1;
    let limit = limit.min(TAIL_LIMIT_MAX);
    let mut events = Vec::with_capacity(limit.min(64));
    let first_seq = after_seq.saturating_add(1);
    let values = keyspaces
        .event_values(tenant.stream_no, first_seq..=u64::MAX)
        .take(limit);
    for (expected_seq, item) in (first_seq..).zip(values) {
        let (seq, value) = item?;
        let event = decode(keyspaces, tenant.stream_no, seq, value)?;
        // Seqs are gap-free: a hole means lost data and is reported, not skipped.
        if event.stored.seq != expected_seq {
            return Err(ReadError::Corrupt {
                location: format!("stream {} seq {}", event.stored.stream, expected_seq),
                reason: format!("expected seq {expected_seq}, found {}", event.stored.seq),
            });
        }
        events.push(event);
    }
    Ok((events, last_seq))
}

fn read_event(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    seq: u64,
) -> Result<ReadEvent, ReadError> {
    let value = keyspaces
        .event_value(stream_no, seq)?
        .ok_or_else(|| ReadError::Corrupt {
            location: format!("stream {stream_no} seq {seq}"),
            reason: "event is missing".into(),
        })?;
    decode(keyspaces, stream_no, seq, value)
}

/// The canonical bytes of a stored event value (`storage::event_codec`).
pub fn canonical(
    keyspaces: &ShardKeyspaces,
    location: impl FnOnce() -> String,
    value: StoredValue,
) -> Result<Canonical, ReadError> {
    keyspaces
        .codec
        .canonical(value)
        .map_err(|error| ReadError::Corrupt {
            location: location(),
            reason: error.to_string(),
        })
}

/// Decodes the value stored under `seq` of stream `stream_no` and checks that it is
/// that event.
fn decode(
    keyspaces: &ShardKeyspaces,
    stream_no: u32,
    seq: u64,
    value: StoredValue,
) -> Result<ReadEvent, ReadError> {
    let location = || format!("stream {stream_no} seq {seq}");
    let value = canonical(keyspaces, location, value)?;
    let stored = StoredEvent::decode_canonical(&value).map_err(|error| ReadError::Corrupt {
        location: location(),
        reason: error.to_string(),
    })?;
    if stored.seq != seq {
        return Err(ReadError::Corrupt {
            location: location(),
            reason: format!("record says seq {}", stored.seq),
        });
    }
    Ok(ReadEvent {
        leaf_hash: leaf_hash(&value),
        stored,
    })
}
