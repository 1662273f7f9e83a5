//! The event as the ledger keeps it, and its canonical, hashed encoding.
//!
//! Protobuf encoding is not canonical (field order, default elision and unknown fields
//! are all up to the encoder), so what the ledger stores and hashes is our own
//! length-prefixed, versioned encoding, documented in `docs/CANONICAL_ENCODING.md` with
//! test vectors. The leaf hash of an event is `SHA-256(0x00 || canonical bytes)`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version byte that starts every canonical encoding. A new layout gets a new version;
/// old versions stay decodable forever, because their hashes are in the chain.
pub const CANONICAL_VERSION: u8 = 1;

/// Domain separator of a leaf hash (RFC 9162: leaves are hashed with a 0x00 prefix).
pub const LEAF_HASH_PREFIX: u8 = 0x00;

pub type LeafHash = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum ActorKind {
    User = 1,
    Service = 2,
    System = 3,
}

impl ActorKind {
    pub fn from_u8(value: u8) -> Option<ActorKind> {
        match value {
            1 => Some(ActorKind::User),
            2 => Some(ActorKind::Service),
            3 => Some(ActorKind::System),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Outcome {
    Success = 1,
    Failure = 2,
    Denied = 3,
}

impl Outcome {
    pub fn from_u8(value: u8) -> Option<Outcome> {
        match value {
            1 => Some(Outcome::Success),
            2 => Some(Outcome::Failure),
            3 => Some(Outcome::Denied),
            _ => None,
        }
    }
}

/// A validated event, as the leader proposes it through the Raft log.
///
/// Every field has passed `validate::validate_event`; `event_id` and `subject_id` are
/// never empty here (the node fills them in before proposing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: String,
    pub tenant_id: String,
    pub actor_kind: ActorKind,
    pub actor_id: String,
    pub actor_email: String,
    pub actor_name: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub outcome: Outcome,
    pub occurred_at_ns: i64,
    pub request_id: String,
    pub session_id: String,
    pub ip_address: String,
    pub user_agent: String,
    pub metadata_json: String,
    pub subject_id: String,
}

impl EventRecord {
    /// Approximate heap and wire size, used to bound queues and batches in bytes.
    pub fn size_bytes(&self) -> usize {
        64 + self.event_id.len()
            + self.tenant_id.len()
            + self.actor_id.len()
            + self.actor_email.len()
            + self.actor_name.len()
            + self.action.len()
            + self.resource_type.len()
            + self.resource_id.len()
            + self.request_id.len()
            + self.session_id.len()
            + self.ip_address.len()
            + self.user_agent.len()
            + self.metadata_json.len()
            + self.subject_id.len()
    }
}

/// An event with what the ledger added at apply: its stream position and ingest time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub stream: String,
    pub seq: u64,
    pub ingested_at_ns: i64,
    pub event: EventRecord,
}

impl StoredEvent {
    /// Canonical encoding, version 1. Integers are big-endian; strings are a u32
    /// big-endian byte length followed by UTF-8 bytes. Field order is fixed and every
    /// field is always present, so one event has exactly one encoding.
    pub fn encode_canonical(&self, out: &mut Vec<u8>) {
        encode_canonical(
            &self.stream,
            self.seq,
            self.ingested_at_ns,
            &self.event,
            out,
        );
    }

    pub fn to_canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.event.size_bytes() + self.stream.len());
        self.encode_canonical(&mut out);
        out
    }
}

/// The canonical encoding of an event at a stream position, without building a
/// [`StoredEvent`] (apply encodes straight from the proposed record).
pub fn encode_canonical(
    stream: &str,
    seq: u64,
    ingested_at_ns: i64,
    event: &EventRecord,
    out: &mut Vec<u8>,
) {
    out.push(CANONICAL_VERSION);
    put_str(out, stream);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ingested_at_ns.to_be_bytes());
    put_str(out, &event.tenant_id);
    put_str(out, &event.event_id);
    out.extend_from_slice(&event.occurred_at_ns.to_be_bytes());
    out.push(event.actor_kind as u8);
    put_str(out, &event.actor_id);
    put_str(out, &event.actor_email);
    put_str(out, &event.actor_name);
    put_str(out, &event.action);
    put_str(out, &event.resource_type);
    put_str(out, &event.resource_id);
    out.push(event.outcome as u8);
    put_str(out, &event.request_id);
    put_str(out, &event.session_id);
    put_str(out, &event.ip_address);
    put_str(out, &event.user_agent);
    put_str(out, &event.metadata_json);
    put_str(out, &event.subject_id);
}

impl StoredEvent {
    /// Decodes a canonical encoding; rejects trailing bytes, bad UTF-8, unknown versions
    /// and unknown enum values, so a damaged record is never served as an event.
    pub fn decode_canonical(bytes: &[u8]) -> Result<StoredEvent, DecodeError> {
        let mut reader = Reader { bytes, position: 0 };
        let version = reader.u8()?;
        if version != CANONICAL_VERSION {
            return Err(DecodeError::Version(version));
        }
        let stream = reader.string()?;
        let seq = reader.u64()?;
        let ingested_at_ns = reader.i64()?;
        let tenant_id = reader.string()?;
        let event_id = reader.string()?;
        let occurred_at_ns = reader.i64()?;
        let actor_kind_byte = reader.u8()?;
        let actor_kind = ActorKind::from_u8(actor_kind_byte).ok_or(DecodeError::Enum {
            field: "actor_kind",
            value: actor_kind_byte,
        })?;
        let actor_id = reader.string()?;
        let actor_email = reader.string()?;
        let actor_name = reader.string()?;
        let action = reader.string()?;
        let resource_type = reader.string()?;
        let resource_id = reader.string()?;
        let outcome_byte = reader.u8()?;
        let outcome = Outcome::from_u8(outcome_byte).ok_or(DecodeError::Enum {
            field: "outcome",
            value: outcome_byte,
        })?;
        let request_id = reader.string()?;
        let session_id = reader.string()?;
        let ip_address = reader.string()?;
        let user_agent = reader.string()?;
        let metadata_json = reader.string()?;
        let subject_id = reader.string()?;
        if reader.position != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - reader.position));
        }
        Ok(StoredEvent {
            stream,
            seq,
            ingested_at_ns,
            event: EventRecord {
                event_id,
                tenant_id,
                actor_kind,
                actor_id,
                actor_email,
                actor_name,
                action,
                resource_type,
                resource_id,
                outcome,
                occurred_at_ns,
                request_id,
                session_id,
                ip_address,
                user_agent,
                metadata_json,
                subject_id,
            },
        })
    }
}

/// `SHA-256(0x00 || canonical)`.
pub fn leaf_hash(canonical: &[u8]) -> LeafHash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_HASH_PREFIX]);
    hasher.update(canonical);
    hasher.finalize().into()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("canonical event: unknown version {0}")]
    Version(u8),
    #[error("canonical event: truncated at byte {0}")]
    Truncated(usize),
    #[error("canonical event: field is not UTF-8 at byte {0}")]
    Utf8(usize),
    #[error("canonical event: unknown {field} value {value}")]
    Enum { field: &'static str, value: u8 },
    #[error("canonical event: {0} trailing bytes")]
    TrailingBytes(usize),
    #[error("stored block: its hash does not match its header")]
    Checksum,
}

fn put_str(out: &mut Vec<u8>, value: &str) {
    let length = u32::try_from(value.len()).expect("validated strings are far below 4 GiB");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, position: 0 }
    }

    /// Fails unless every byte was read.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.position {
            0 => Ok(()),
            trailing => Err(DecodeError::TrailingBytes(trailing)),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array::<4>()?))
    }

    fn take(&mut self, count: usize) -> Result<&[u8], DecodeError> {
        let end = self
            .position
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(DecodeError::Truncated(self.position))?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        Ok(u64::from_be_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, DecodeError> {
        let bytes = self.take(8)?;
        Ok(i64::from_be_bytes(bytes.try_into().expect("8 bytes")))
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let length_bytes = self.take(4)?;
        let length = u32::from_be_bytes(length_bytes.try_into().expect("4 bytes")) as usize;
        let start = self.position;
        let bytes = self.take(length)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8(start))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample_event(tenant: &str, event_id: &str) -> EventRecord {
        EventRecord {
            event_id: event_id.to_string(),
            tenant_id: tenant.to_string(),
            actor_kind: ActorKind::User,
            actor_id: "usr_1".to_string(),
            actor_email: "ada@example.com".to_string(),
            actor_name: "Ada".to_string(),
            action: "auth.login".to_string(),
            resource_type: "session".to_string(),
            resource_id: "ses_1".to_string(),
            outcome: Outcome::Success,
            occurred_at_ns: 1_735_689_602_719_812_000,
            request_id: "req_1".to_string(),
            session_id: "".to_string(),
            ip_address: "203.0.113.7".to_string(),
            user_agent: "curl/8".to_string(),
            metadata_json: r#"{"mfa":true}"#.to_string(),
            subject_id: "usr_1".to_string(),
        }
    }

    fn sample_stored() -> StoredEvent {
        StoredEvent {
            stream: "ten_0001/0".to_string(),
            seq: 1,
            ingested_at_ns: 1_735_689_603_000_000_000,
            event: sample_event("ten_0001", "evt_1"),
        }
    }

    #[test]
    fn canonical_round_trips() {
        let stored = sample_stored();
        let bytes = stored.to_canonical();
        assert_eq!(StoredEvent::decode_canonical(&bytes).unwrap(), stored);
    }

    #[test]
    fn canonical_rejects_damage() {
        let bytes = sample_stored().to_canonical();
        assert_eq!(
            StoredEvent::decode_canonical(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated(bytes.len() - "usr_1".len()))
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            StoredEvent::decode_canonical(&longer),
            Err(DecodeError::TrailingBytes(1))
        );
        let mut other_version = bytes.clone();
        other_version[0] = 9;
        assert_eq!(
            StoredEvent::decode_canonical(&other_version),
            Err(DecodeError::Version(9))
        );
    }

    /// Test vector, also printed in docs/CANONICAL_ENCODING.md: if this changes, every
    /// stored hash changes, which must never happen within a version.
    #[test]
    fn leaf_hash_test_vector() {
        let bytes = sample_stored().to_canonical();
        let hash = leaf_hash(&bytes);
        let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(bytes.len(), 194);
        assert_eq!(
            hex,
            "aac0a5411a911bbc021a4db79273f24b41c6ed12b8386ed922943d2d7931d930"
        );
    }
}
