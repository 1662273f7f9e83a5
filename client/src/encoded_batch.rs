//! A batch of events already encoded as a `RecordBatchRequest` body.

use bytes::Bytes;
use prost::Message;
use trail_proto::v1::{Event, RecordBatchRequest};

use crate::error::Error;
use crate::shard_map::tenant_key;

/// The protobuf tag byte of `RecordBatchRequest.events` (field 1, length-delimited).
const EVENTS_FIELD_TAG: u8 = (1 << 3) | 2;

/// A batch encoded once, ready to send any number of times.
///
/// Encoding 500 events of ~500 bytes costs tens of microseconds; a benchmark that
/// pre-encodes keeps that work off the clock and off the two cores the node also
/// needs. The encoded form is also about half the memory of `Vec<Event>`, which matters
/// when a million events are held in memory before a run. Every event has an
/// `event_id` (assigned when empty), so resending the batch is idempotent.
///
/// A batch of several tenants also keeps, per event, where its bytes end in the body
/// and its tenant's shard key (16 bytes an event, ~3% of a 500-byte event): the client
/// splits it by shard leader by concatenating the events' byte ranges (a repeated
/// field's encoding is the concatenation of its elements'), without decoding.
#[derive(Clone, Debug)]
pub struct EncodedBatch {
    body: Bytes,
    events_count: usize,
    /// The tenant of every event, when they share one: the batch can then go straight
    /// to that tenant's leader.
    tenant_id: Option<String>,
    /// One per event when the events have several tenants, else empty.
    spans: Vec<EventSpan>,
}

/// Where one event of an [`EncodedBatch`] is and which shard its tenant maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EventSpan {
    /// Offset in the body just past the event's field (tag, length, message); the
    /// event starts where the one before it ends.
    end_bytes: u32,
    /// [`tenant_key`] of the event's tenant.
    tenant_key: u64,
}

impl EncodedBatch {
    /// Assigns a UUID v4 `event_id` to events without one, then encodes.
    pub fn new(mut events: Vec<Event>) -> EncodedBatch {
        assign_missing_event_ids(&mut events);
        let tenant_id = single_tenant(&events);
        if tenant_id.is_some() || events.len() < 2 {
            let body = encode_events(events.iter());
            return EncodedBatch {
                body,
                events_count: events.len(),
                tenant_id,
                spans: Vec::new(),
            };
        }
        let capacity_bytes: usize = events.iter().map(|event| event.encoded_len() + 11).sum();
        let mut body = Vec::with_capacity(capacity_bytes);
        let mut spans = Vec::with_capacity(events.len());
        for event in &events {
            encode_event(event, &mut body);
            // The server refuses requests over a few MiB, far below 4 GiB.
            let end_bytes = u32::try_from(body.len()).expect("a batch body is under 4 GiB");
            spans.push(EventSpan {
                end_bytes,
                tenant_key: tenant_key(&event.tenant_id),
            });
        }
        EncodedBatch {
            body: Bytes::from(body),
            events_count: events.len(),
            tenant_id,
            spans,
        }
    }

    pub fn len(&self) -> usize {
        self.events_count
    }

    pub fn is_empty(&self) -> bool {
        self.events_count == 0
    }

    /// Size of the encoded request body.
    pub fn body_bytes(&self) -> usize {
        self.body.len()
    }

    pub(crate) fn body(&self) -> Bytes {
        self.body.clone()
    }

    pub(crate) fn tenant_id(&self) -> Option<&str> {
        self.tenant_id.as_deref()
    }

    /// Each event's tenant key, in batch order, when the batch has several tenants
    /// (else `None`: there is nothing to split).
    pub(crate) fn tenant_keys(&self) -> Option<impl Iterator<Item = u64> + '_> {
        if self.spans.is_empty() {
            return None;
        }
        Some(self.spans.iter().map(|span| span.tenant_key))
    }

    /// The body of a request of the events at `positions` (ascending, each below
    /// `len()`): their encoded bytes, concatenated. Only for a batch of several
    /// tenants.
    pub(crate) fn part_body(&self, positions: &[usize]) -> Bytes {
        assert_eq!(
            self.spans.len(),
            self.events_count,
            "only a batch of several tenants is split"
        );
        if positions.len() == self.events_count {
            return self.body.clone();
        }
        let ranges = positions.iter().map(|&position| self.event_range(position));
        let part_bytes: usize = ranges.clone().map(|range| range.len()).sum();
        let mut part = Vec::with_capacity(part_bytes);
        for range in ranges {
            part.extend_from_slice(&self.body[range]);
        }
        assert_eq!(part.len(), part_bytes);
        Bytes::from(part)
    }

    fn event_range(&self, position: usize) -> std::ops::Range<usize> {
        let start = match position {
            0 => 0,
            _ => self.spans[position - 1].end_bytes as usize,
        };
        let end = self.spans[position].end_bytes as usize;
        assert!(
            start < end && end <= self.body.len(),
            "event span in the body"
        );
        start..end
    }

    /// The events back, for resending a subset after a partial failure.
    pub fn decode(&self) -> Result<Vec<Event>, Error> {
        let request = RecordBatchRequest::decode(self.body.clone())
            .map_err(|error| Error::Protocol(format!("encoded batch does not decode: {error}")))?;
        assert_eq!(
            request.events.len(),
            self.events_count,
            "encoded batch event count"
        );
        Ok(request.events)
    }
}

/// The tenant of every event, if they all have the same non-empty one.
pub(crate) fn single_tenant(events: &[Event]) -> Option<String> {
    let first = &events.first()?.tenant_id;
    if first.is_empty() {
        return None;
    }
    for event in events {
        if event.tenant_id != *first {
            return None;
        }
    }
    Some(first.clone())
}

/// Gives every event without an idempotency key a fresh UUID v4, so that a retry of the
/// same event is recognised by the server as a duplicate.
pub(crate) fn assign_missing_event_ids(events: &mut [Event]) {
    for event in events.iter_mut() {
        if event.event_id.is_empty() {
            event.event_id = uuid::Uuid::new_v4().to_string();
        }
    }
}

/// Encodes events as the body of a `RecordBatchRequest` without copying them into one.
pub(crate) fn encode_events<'a, I>(events: I) -> Bytes
where
    I: Iterator<Item = &'a Event> + Clone,
{
    // Tag + length prefix (at most 10 bytes) + message, per event.
    let capacity_bytes: usize = events.clone().map(|event| event.encoded_len() + 11).sum();
    let mut body = Vec::with_capacity(capacity_bytes);
    for event in events {
        encode_event(event, &mut body);
    }
    Bytes::from(body)
}

/// Appends one element of `RecordBatchRequest.events`: tag, length, message.
fn encode_event(event: &Event, body: &mut Vec<u8>) {
    body.push(EVENTS_FIELD_TAG);
    event
        .encode_length_delimited(body)
        .expect("a Vec grows to fit any message");
}

/// The event ids of a request body, in order: for naming the events of a part of a
/// split batch that got no answer.
pub(crate) fn event_ids_of(body: &Bytes) -> Result<Vec<String>, Error> {
    let request = RecordBatchRequest::decode(body.clone())
        .map_err(|error| Error::Protocol(format!("batch body does not decode: {error}")))?;
    Ok(request
        .events
        .into_iter()
        .map(|event| event.event_id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_id: &str, action: &str) -> Event {
        Event {
            event_id: event_id.to_string(),
            tenant_id: "ten_0001".to_string(),
            action: action.to_string(),
            metadata_json: "{\"k\":1}".to_string(),
            ..Event::default()
        }
    }

    #[test]
    fn encoding_matches_prost_and_round_trips() {
        let events = vec![event("a", "auth.login"), event("b", "role.assign")];
        let batch = EncodedBatch::new(events.clone());
        let expected = RecordBatchRequest {
            events: events.clone(),
        }
        .encode_to_vec();
        assert_eq!(batch.body().as_ref(), expected.as_slice());
        assert_eq!(batch.decode().unwrap(), events);
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn a_part_of_a_mixed_batch_is_its_events_bytes() {
        let mut events = vec![
            event("a", "auth.login"),
            event("b", "role.assign"),
            event("c", "auth.logout"),
            event("d", "x"),
        ];
        events[1].tenant_id = "ten_0002".to_string();
        events[3].tenant_id = "acme".to_string();
        let batch = EncodedBatch::new(events.clone());
        assert_eq!(batch.tenant_id(), None);
        assert_eq!(batch.body().as_ref(), encode_events(events.iter()).as_ref());
        let keys: Vec<u64> = batch.tenant_keys().unwrap().collect();
        let expected_keys: Vec<u64> = events.iter().map(|e| tenant_key(&e.tenant_id)).collect();
        assert_eq!(keys, expected_keys);

        let part = batch.part_body(&[0, 2, 3]);
        let decoded = RecordBatchRequest::decode(part.clone()).unwrap().events;
        assert_eq!(
            decoded,
            vec![events[0].clone(), events[2].clone(), events[3].clone()]
        );
        assert_eq!(event_ids_of(&part).unwrap(), vec!["a", "c", "d"]);
        assert_eq!(
            batch.part_body(&[1]).as_ref(),
            encode_events(events[1..2].iter()).as_ref()
        );
        assert_eq!(batch.part_body(&[0, 1, 2, 3]), batch.body());

        // One tenant: nothing to split, nothing kept per event.
        let single = EncodedBatch::new(vec![event("a", "x"), event("b", "y")]);
        assert_eq!(single.tenant_id(), Some("ten_0001"));
        assert!(single.tenant_keys().is_none());
    }

    #[test]
    fn missing_event_ids_are_assigned_once() {
        let batch = EncodedBatch::new(vec![event("", "auth.login"), event("keep", "x")]);
        let first = batch.decode().unwrap();
        let second = batch.decode().unwrap();
        assert_eq!(first[0].event_id.len(), 36);
        assert_eq!(first[0].event_id, second[0].event_id);
        assert_eq!(first[1].event_id, "keep");
    }
}
