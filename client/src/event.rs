//! Canonical event encoding, version 1 (docs/CANONICAL_ENCODING.md): the bytes Trail
//! stores and hashes for an event. Pure: no I/O.
//!
//! Written from the document, sharing no code with the server, so that an auditor decodes
//! the ledger with nothing but the spec.

use crate::verify::leaf_hash;

/// The only version this decoder knows.
pub const EVENT_VERSION_1: u8 = 1;

/// Why canonical event bytes were refused. Messages name the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("empty event bytes")]
    Empty,
    #[error("unknown canonical event version {version} (this client knows version 1)")]
    UnknownVersion { version: u8 },
    #[error("truncated at field {field}: needs {needed} more bytes, {left} left")]
    Truncated {
        field: &'static str,
        needed: u64,
        left: usize,
    },
    #[error("field {field} is not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("field {field} has unknown value {value} (expected 1, 2 or 3)")]
    BadEnum { field: &'static str, value: u8 },
    #[error("{bytes} trailing bytes after the last field")]
    TrailingBytes { bytes: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorType {
    User,
    Service,
    System,
}

impl ActorType {
    fn from_byte(value: u8) -> Option<ActorType> {
        match value {
            1 => Some(ActorType::User),
            2 => Some(ActorType::Service),
            3 => Some(ActorType::System),
            _ => None,
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            ActorType::User => 1,
            ActorType::Service => 2,
            ActorType::System => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    Success,
    Failure,
    Denied,
}

impl EventResult {
    fn from_byte(value: u8) -> Option<EventResult> {
        match value {
            1 => Some(EventResult::Success),
            2 => Some(EventResult::Failure),
            3 => Some(EventResult::Denied),
            _ => None,
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            EventResult::Success => 1,
            EventResult::Failure => 2,
            EventResult::Denied => 3,
        }
    }
}

/// Every field of a version 1 canonical event, in layout order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalEvent {
    pub stream: String,
    pub seq: u64,
    /// ns since the Unix epoch.
    pub ingested_at: i64,
    pub tenant_id: String,
    pub event_id: String,
    /// ns since the Unix epoch.
    pub occurred_at: i64,
    pub actor_type: ActorType,
    pub actor_id: String,
    pub actor_email: String,
    pub actor_name: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub result: EventResult,
    pub request_id: String,
    pub session_id: String,
    pub ip_address: String,
    pub user_agent: String,
    pub metadata: String,
    pub subject_id: String,
}

/// A decoded event that borrows its strings from the canonical bytes: what a full audit
/// needs per event, without an allocation per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalEventRef<'a> {
    pub stream: &'a str,
    pub seq: u64,
    /// ns since the Unix epoch.
    pub ingested_at: i64,
    pub tenant_id: &'a str,
    pub event_id: &'a str,
    /// ns since the Unix epoch.
    pub occurred_at: i64,
    pub actor_type: ActorType,
    pub actor_id: &'a str,
    pub actor_email: &'a str,
    pub actor_name: &'a str,
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub result: EventResult,
    pub request_id: &'a str,
    pub session_id: &'a str,
    pub ip_address: &'a str,
    pub user_agent: &'a str,
    pub metadata: &'a str,
    pub subject_id: &'a str,
}

/// Big-endian reads over a byte slice; every read names its field when it runs out.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn take(
        &mut self,
        field: &'static str,
        count: u64,
    ) -> Result<&'a [u8], (&'static str, u64, usize)> {
        if count > self.bytes.len() as u64 {
            return Err((field, count, self.bytes.len()));
        }
        let (taken, rest) = self.bytes.split_at(count as usize);
        self.bytes = rest;
        Ok(taken)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], (&'static str, u64, usize)> {
        let taken = self.take(field, N as u64)?;
        Ok(taken.try_into().expect("took N bytes"))
    }
}

fn truncated((field, needed, left): (&'static str, u64, usize)) -> EventDecodeError {
    EventDecodeError::Truncated {
        field,
        needed,
        left,
    }
}

fn read_u8(reader: &mut Reader<'_>, field: &'static str) -> Result<u8, EventDecodeError> {
    Ok(reader.array::<1>(field).map_err(truncated)?[0])
}

fn read_u64(reader: &mut Reader<'_>, field: &'static str) -> Result<u64, EventDecodeError> {
    Ok(u64::from_be_bytes(reader.array(field).map_err(truncated)?))
}

fn read_i64(reader: &mut Reader<'_>, field: &'static str) -> Result<i64, EventDecodeError> {
    Ok(i64::from_be_bytes(reader.array(field).map_err(truncated)?))
}

fn read_string<'a>(
    reader: &mut Reader<'a>,
    field: &'static str,
) -> Result<&'a str, EventDecodeError> {
    let length = u32::from_be_bytes(reader.array(field).map_err(truncated)?);
    let bytes = reader.take(field, u64::from(length)).map_err(truncated)?;
    std::str::from_utf8(bytes).map_err(|_| EventDecodeError::BadUtf8 { field })
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    let length = u32::try_from(text.len()).expect("canonical strings are under 4 GiB");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(text.as_bytes());
}

impl<'a> CanonicalEventRef<'a> {
    /// Decodes version 1 canonical bytes. Refuses unknown versions, unknown enum values,
    /// bad UTF-8, truncation and trailing bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<CanonicalEventRef<'a>, EventDecodeError> {
        if bytes.is_empty() {
            return Err(EventDecodeError::Empty);
        }
        let mut reader = Reader::new(bytes);
        let version = read_u8(&mut reader, "version")?;
        if version != EVENT_VERSION_1 {
            return Err(EventDecodeError::UnknownVersion { version });
        }
        let stream = read_string(&mut reader, "stream")?;
        let seq = read_u64(&mut reader, "seq")?;
        let ingested_at = read_i64(&mut reader, "ingested_at")?;
        let tenant_id = read_string(&mut reader, "tenant_id")?;
        let event_id = read_string(&mut reader, "event_id")?;
        let occurred_at = read_i64(&mut reader, "occurred_at")?;
        let actor_type_byte = read_u8(&mut reader, "actor.type")?;
        let actor_type =
            ActorType::from_byte(actor_type_byte).ok_or(EventDecodeError::BadEnum {
                field: "actor.type",
                value: actor_type_byte,
            })?;
        let actor_id = read_string(&mut reader, "actor.id")?;
        let actor_email = read_string(&mut reader, "actor.email")?;
        let actor_name = read_string(&mut reader, "actor.name")?;
        let action = read_string(&mut reader, "action")?;
        let resource_type = read_string(&mut reader, "resource.type")?;
        let resource_id = read_string(&mut reader, "resource.id")?;
        let result_byte = read_u8(&mut reader, "result")?;
        let result = EventResult::from_byte(result_byte).ok_or(EventDecodeError::BadEnum {
            field: "result",
            value: result_byte,
        })?;
        let request_id = read_string(&mut reader, "request_id")?;
        let session_id = read_string(&mut reader, "session_id")?;
        let ip_address = read_string(&mut reader, "ip_address")?;
        let user_agent = read_string(&mut reader, "user_agent")?;
        let metadata = read_string(&mut reader, "metadata")?;
        let subject_id = read_string(&mut reader, "subject_id")?;
        if reader.remaining() != 0 {
            return Err(EventDecodeError::TrailingBytes {
                bytes: reader.remaining(),
            });
        }
        Ok(CanonicalEventRef {
            stream,
            seq,
            ingested_at,
            tenant_id,
            event_id,
            occurred_at,
            actor_type,
            actor_id,
            actor_email,
            actor_name,
            action,
            resource_type,
            resource_id,
            result,
            request_id,
            session_id,
            ip_address,
            user_agent,
            metadata,
            subject_id,
        })
    }
}

impl CanonicalEvent {
    /// Decodes version 1 canonical bytes. Refuses unknown versions, unknown enum values,
    /// bad UTF-8, truncation and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<CanonicalEvent, EventDecodeError> {
        let event = CanonicalEventRef::decode(bytes)?;
        Ok(CanonicalEvent {
            stream: event.stream.to_string(),
            seq: event.seq,
            ingested_at: event.ingested_at,
            tenant_id: event.tenant_id.to_string(),
            event_id: event.event_id.to_string(),
            occurred_at: event.occurred_at,
            actor_type: event.actor_type,
            actor_id: event.actor_id.to_string(),
            actor_email: event.actor_email.to_string(),
            actor_name: event.actor_name.to_string(),
            action: event.action.to_string(),
            resource_type: event.resource_type.to_string(),
            resource_id: event.resource_id.to_string(),
            result: event.result,
            request_id: event.request_id.to_string(),
            session_id: event.session_id.to_string(),
            ip_address: event.ip_address.to_string(),
            user_agent: event.user_agent.to_string(),
            metadata: event.metadata.to_string(),
            subject_id: event.subject_id.to_string(),
        })
    }

    /// The version 1 canonical bytes; `decode(encode(e)) == e`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(EVENT_VERSION_1);
        put_string(&mut out, &self.stream);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.ingested_at.to_be_bytes());
        put_string(&mut out, &self.tenant_id);
        put_string(&mut out, &self.event_id);
        out.extend_from_slice(&self.occurred_at.to_be_bytes());
        out.push(self.actor_type.to_byte());
        put_string(&mut out, &self.actor_id);
        put_string(&mut out, &self.actor_email);
        put_string(&mut out, &self.actor_name);
        put_string(&mut out, &self.action);
        put_string(&mut out, &self.resource_type);
        put_string(&mut out, &self.resource_id);
        out.push(self.result.to_byte());
        put_string(&mut out, &self.request_id);
        put_string(&mut out, &self.session_id);
        put_string(&mut out, &self.ip_address);
        put_string(&mut out, &self.user_agent);
        put_string(&mut out, &self.metadata);
        put_string(&mut out, &self.subject_id);
        out
    }
}

/// The event's leaf: `SHA-256(0x00 || canonical bytes)`.
pub fn event_leaf_hash(canonical: &[u8]) -> [u8; 32] {
    leaf_hash(canonical)
}

/// The leaf hash the ledger gives `event` as a producer sends it, recorded at the
/// stream, seq and `ingested_at` of `receipt` (under the receipt's event id, which the
/// node chose if the event had none). The node's normalization is applied: a missing
/// resource is empty, `subject_id` defaults to `actor.id`. `None` for an event a node
/// would not accept (no actor, an unknown enum, a time out of range).
pub fn expected_leaf_hash(
    event: &trail_proto::v1::Event,
    receipt: &trail_proto::v1::Receipt,
) -> Option<[u8; 32]> {
    let actor = event.actor.as_ref()?;
    let occurred_at = event.occurred_at.as_ref()?;
    let occurred_at = occurred_at
        .seconds
        .checked_mul(1_000_000_000)?
        .checked_add(i64::from(occurred_at.nanos))?;
    let resource = event.resource.clone().unwrap_or_default();
    let subject_id = if event.subject_id.is_empty() {
        actor.id.clone()
    } else {
        event.subject_id.clone()
    };
    let canonical = CanonicalEvent {
        stream: receipt.stream.clone(),
        seq: receipt.seq,
        ingested_at: receipt.ingested_at_ns,
        tenant_id: event.tenant_id.clone(),
        event_id: receipt.event_id.clone(),
        occurred_at,
        actor_type: ActorType::from_byte(u8::try_from(actor.r#type).ok()?)?,
        actor_id: actor.id.clone(),
        actor_email: actor.email.clone(),
        actor_name: actor.name.clone(),
        action: event.action.clone(),
        resource_type: resource.r#type,
        resource_id: resource.id,
        result: EventResult::from_byte(u8::try_from(event.result).ok()?)?,
        request_id: event.request_id.clone(),
        session_id: event.session_id.clone(),
        ip_address: event.ip_address.clone(),
        user_agent: event.user_agent.clone(),
        metadata: event.metadata_json.clone(),
        subject_id,
    };
    Some(leaf_hash(&canonical.encode()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// docs/CANONICAL_ENCODING.md, "Test vector".
    pub(crate) const VECTOR_HEX: &str = "\
010000000a74656e5f303030312f3000000000000000011816687f73275e000000000874656e5f303030310000000565\
76745f311816687f627409a001000000057573725f310000000f616461406578616d706c652e636f6d00000003416461\
0000000a617574682e6c6f67696e0000000773657373696f6e000000057365735f3101000000057265715f3100000000\
0000000b3230332e302e3131332e37000000066375726c2f380000000c7b226d6661223a747275657d00000005757372\
5f31";

    pub(crate) const VECTOR_LEAF_HEX: &str =
        "aac0a5411a911bbc021a4db79273f24b41c6ed12b8386ed922943d2d7931d930";

    pub(crate) fn vector_event() -> CanonicalEvent {
        CanonicalEvent {
            stream: "ten_0001/0".to_string(),
            seq: 1,
            ingested_at: 1_735_689_603_000_000_000,
            tenant_id: "ten_0001".to_string(),
            event_id: "evt_1".to_string(),
            occurred_at: 1_735_689_602_719_812_000,
            actor_type: ActorType::User,
            actor_id: "usr_1".to_string(),
            actor_email: "ada@example.com".to_string(),
            actor_name: "Ada".to_string(),
            action: "auth.login".to_string(),
            resource_type: "session".to_string(),
            resource_id: "ses_1".to_string(),
            result: EventResult::Success,
            request_id: "req_1".to_string(),
            session_id: String::new(),
            ip_address: "203.0.113.7".to_string(),
            user_agent: "curl/8".to_string(),
            metadata: r#"{"mfa":true}"#.to_string(),
            subject_id: "usr_1".to_string(),
        }
    }

    #[test]
    fn the_documented_test_vector_decodes_and_hashes() {
        let bytes = hex::decode(VECTOR_HEX).unwrap();
        assert_eq!(bytes.len(), 194);
        let event = CanonicalEvent::decode(&bytes).unwrap();
        assert_eq!(event, vector_event());
        assert_eq!(event.encode(), bytes);
        assert_eq!(hex::encode(event_leaf_hash(&bytes)), VECTOR_LEAF_HEX);
    }

    fn any_actor_type() -> impl proptest::strategy::Strategy<Value = ActorType> {
        proptest::prop_oneof![
            proptest::strategy::Just(ActorType::User),
            proptest::strategy::Just(ActorType::Service),
            proptest::strategy::Just(ActorType::System),
        ]
    }

    fn any_result() -> impl proptest::strategy::Strategy<Value = EventResult> {
        proptest::prop_oneof![
            proptest::strategy::Just(EventResult::Success),
            proptest::strategy::Just(EventResult::Failure),
            proptest::strategy::Just(EventResult::Denied),
        ]
    }

    proptest::proptest! {
        /// The encoder is the decoder's inverse both ways: any event survives
        /// encode-then-decode, and its bytes survive decode-then-encode. (The export
        /// verifier re-encodes events from their exported fields; the process test
        /// `t95_export` checks the same on a real node's bytes.)
        #[test]
        fn encode_and_decode_are_inverse(
            texts in proptest::collection::vec(".{0,40}", 15),
            numbers in proptest::prelude::any::<(u64, i64, i64)>(),
            actor_type in any_actor_type(),
            result in any_result(),
        ) {
            let text = |index: usize| texts[index].clone();
            let event = CanonicalEvent {
                stream: text(0),
                seq: numbers.0,
                ingested_at: numbers.1,
                tenant_id: text(1),
                event_id: text(2),
                occurred_at: numbers.2,
                actor_type,
                actor_id: text(3),
                actor_email: text(4),
                actor_name: text(5),
                action: text(6),
                resource_type: text(7),
                resource_id: text(8),
                result,
                request_id: text(9),
                session_id: text(10),
                ip_address: text(11),
                user_agent: text(12),
                metadata: text(13),
                subject_id: text(14),
            };
            let bytes = event.encode();
            let decoded = CanonicalEvent::decode(&bytes).unwrap();
            proptest::prop_assert_eq!(&decoded, &event);
            proptest::prop_assert_eq!(decoded.encode(), bytes);
        }
    }

    #[test]
    fn damaged_bytes_are_refused() {
        let bytes = hex::decode(VECTOR_HEX).unwrap();
        assert_eq!(CanonicalEvent::decode(&[]), Err(EventDecodeError::Empty));

        let mut version = bytes.clone();
        version[0] = 2;
        assert_eq!(
            CanonicalEvent::decode(&version),
            Err(EventDecodeError::UnknownVersion { version: 2 })
        );

        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            CanonicalEvent::decode(&trailing),
            Err(EventDecodeError::TrailingBytes { bytes: 1 })
        );

        for length in 1..bytes.len() {
            assert!(
                matches!(
                    CanonicalEvent::decode(&bytes[..length]),
                    Err(EventDecodeError::Truncated { .. })
                ),
                "truncated to {length}"
            );
        }

        // The actor type byte follows version, stream, seq, ingested_at, tenant_id,
        // event_id and occurred_at.
        let actor_type_at = 1 + (4 + 10) + 8 + 8 + (4 + 8) + (4 + 5) + 8;
        assert_eq!(bytes[actor_type_at], 1);
        let mut actor_type = bytes.clone();
        actor_type[actor_type_at] = 4;
        assert_eq!(
            CanonicalEvent::decode(&actor_type),
            Err(EventDecodeError::BadEnum {
                field: "actor.type",
                value: 4
            })
        );
        actor_type[actor_type_at] = 0;
        assert!(CanonicalEvent::decode(&actor_type).is_err());

        let mut result = vector_event().encode();
        let result_at = result.len()
            - [5, 0, 11, 6, 12, 5]
                .iter()
                .map(|len| 4 + len)
                .sum::<usize>()
            - 1;
        assert_eq!(result[result_at], 1);
        result[result_at] = 9;
        assert_eq!(
            CanonicalEvent::decode(&result),
            Err(EventDecodeError::BadEnum {
                field: "result",
                value: 9
            })
        );

        // The stream's first byte, 't', made an invalid UTF-8 lead byte.
        let mut utf8 = bytes.clone();
        utf8[5] = 0xff;
        assert_eq!(
            CanonicalEvent::decode(&utf8),
            Err(EventDecodeError::BadUtf8 { field: "stream" })
        );

        // A string length beyond the end is truncation, not an allocation.
        let mut length = bytes.clone();
        length[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            CanonicalEvent::decode(&length),
            Err(EventDecodeError::Truncated {
                field: "stream",
                ..
            })
        ));
    }
}
