//! Checksums of stored records, and the bit flips that test them.
//!
//! Every record a replica's disk holds carries a checksum taken when it was written, as
//! the node's fjall blocks and snapshot files do: a log entry, each state-machine record
//! (event, dedup entry, tenant state, block, checkpoint) and the snapshot. A flipped
//! bit changes the record but not its checksum, so a scrub (or a read) sees the
//! mismatch. The replica never serves or applies such a record: it refuses to start
//! and is repaired (`raft/repair.rs`).
//!
//! The checksum is SHA-256 over the record's stored bytes, truncated to 64 bits
//! (fjall uses xxh3; any checksum that a single flipped bit always changes will do, and
//! SHA-256 is already a dependency).

use rand::rngs::StdRng;
use rand::Rng;
use sha2::{Digest, Sha256};
use trail_node::ledger::{BlockRecord, LedgerWrite, MemoryStore, TenantState};

use super::Entry;

/// Attempts at a flip that leaves a decodable record (a flip in a string can make it
/// invalid UTF-8: the record is then unreadable, which a decoder would report as well;
/// the harness wants the harder case, a record that decodes but is wrong).
const FLIP_ATTEMPTS_MAX: usize = 64;

pub fn checksum(bytes: &[u8]) -> u64 {
    let digest = Sha256::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

pub fn entry_bytes(entry: &Entry) -> Vec<u8> {
    bincode::serialize(entry).expect("log entries serialize")
}

/// A log entry as stored: the entry and the checksum taken when it was written.
#[derive(Clone)]
pub struct LogRecord {
    pub entry: Entry,
    pub checksum: u64,
}

impl LogRecord {
    pub fn new(entry: Entry) -> LogRecord {
        let checksum = checksum(&entry_bytes(&entry));
        LogRecord { entry, checksum }
    }

    pub fn is_intact(&self) -> bool {
        checksum(&entry_bytes(&self.entry)) == self.checksum
    }

    /// Flips one bit of the stored entry (its checksum stays). False if no flip left
    /// a decodable entry that differs.
    pub fn flip_bit(&mut self, rng: &mut StdRng) -> bool {
        let bytes = entry_bytes(&self.entry);
        let flipped = flip_until(&bytes, rng, |candidate| {
            bincode::deserialize::<Entry>(candidate)
                .ok()
                .filter(|entry| checksum(&entry_bytes(entry)) != self.checksum)
        });
        match flipped {
            Some(entry) => {
                self.entry = entry;
                true
            }
            None => false,
        }
    }
}

/// A state-machine record's key (the node keeps each in its own fjall keyspace).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RecordKey {
    Event((u32, u64)),
    Dedup((u32, String)),
    Tenant(String),
    Block((u32, u64)),
    Checkpoint((u32, u64)),
}

impl RecordKey {
    pub fn of(write: &LedgerWrite) -> RecordKey {
        match write {
            LedgerWrite::Event { stream_no, seq, .. } => RecordKey::Event((*stream_no, *seq)),
            LedgerWrite::Dedup {
                tenant_no,
                event_id,
                ..
            } => RecordKey::Dedup((*tenant_no, event_id.clone())),
            LedgerWrite::Tenant { tenant_id, .. } => RecordKey::Tenant(tenant_id.clone()),
            LedgerWrite::Block {
                stream_no,
                block_index,
                ..
            } => RecordKey::Block((*stream_no, *block_index)),
            LedgerWrite::Checkpoint {
                stream_no,
                tree_size,
                ..
            } => RecordKey::Checkpoint((*stream_no, *tree_size)),
        }
    }

    /// Every record of a store.
    pub fn all(store: &MemoryStore) -> Vec<RecordKey> {
        let mut keys = Vec::new();
        keys.extend(store.events.keys().map(|key| RecordKey::Event(*key)));
        keys.extend(store.dedup.keys().map(|key| RecordKey::Dedup(key.clone())));
        keys.extend(
            store
                .tenants
                .keys()
                .map(|key| RecordKey::Tenant(key.clone())),
        );
        keys.extend(store.blocks.keys().map(|key| RecordKey::Block(*key)));
        keys.extend(
            store
                .checkpoints
                .keys()
                .map(|key| RecordKey::Checkpoint(*key)),
        );
        keys
    }

    /// The record's stored bytes, as the node's keyspaces hold them.
    pub fn bytes(&self, store: &MemoryStore) -> Option<Vec<u8>> {
        match self {
            RecordKey::Event(key) => store.events.get(key).cloned(),
            RecordKey::Dedup(key) => store.dedup.get(key).map(|(stream_no, seq)| {
                let mut bytes = stream_no.to_be_bytes().to_vec();
                bytes.extend_from_slice(&seq.to_be_bytes());
                bytes
            }),
            RecordKey::Tenant(key) => store.tenants.get(key).map(TenantState::encode),
            RecordKey::Block(key) => store.blocks.get(key).map(BlockRecord::encode),
            RecordKey::Checkpoint(key) => store
                .checkpoints
                .get(key)
                .map(|note| note.as_bytes().to_vec()),
        }
    }

    pub fn checksum(&self, store: &MemoryStore) -> Option<u64> {
        self.bytes(store).map(|bytes| checksum(&bytes))
    }

    /// Flips one bit of the record in `store` so that it still decodes. False if the
    /// record is missing or no flip decodes.
    pub fn flip_bit(&self, store: &mut MemoryStore, rng: &mut StdRng) -> bool {
        let Some(bytes) = self.bytes(store) else {
            return false;
        };
        match self {
            RecordKey::Event(key) => {
                let flipped = flip_until(&bytes, rng, |candidate| Some(candidate.to_vec()));
                flipped
                    .map(|canonical| store.events.insert(*key, canonical))
                    .is_some()
            }
            RecordKey::Dedup(key) => {
                let flipped = flip_until(&bytes, rng, |candidate| {
                    let stream_no = u32::from_be_bytes(candidate[..4].try_into().ok()?);
                    let seq = u64::from_be_bytes(candidate[4..12].try_into().ok()?);
                    Some((stream_no, seq))
                });
                flipped
                    .map(|position| store.dedup.insert(key.clone(), position))
                    .is_some()
            }
            RecordKey::Tenant(key) => {
                let flipped = flip_until(&bytes, rng, TenantState::decode);
                flipped
                    .map(|state| store.tenants.insert(key.clone(), state))
                    .is_some()
            }
            RecordKey::Block(key) => {
                // Any of the record's bytes (hashes or header); the record is kept as
                // flipped, without `BlockRecord::decode`'s own hash check, to test the
                // store's checksum alone.
                let flipped = flip_until(&bytes, rng, |candidate| {
                    (candidate.len() >= 64).then(|| BlockRecord {
                        block_hash: candidate[..32].try_into().expect("32 bytes"),
                        tree_root_after: candidate[32..64].try_into().expect("32 bytes"),
                        header: candidate[64..].to_vec(),
                    })
                });
                flipped
                    .map(|record| store.blocks.insert(*key, record))
                    .is_some()
            }
            RecordKey::Checkpoint(key) => {
                let flipped = flip_until(&bytes, rng, |candidate| {
                    String::from_utf8(candidate.to_vec()).ok()
                });
                flipped
                    .map(|note| store.checkpoints.insert(*key, note))
                    .is_some()
            }
        }
    }
}

/// Flips one seeded bit of `bytes` at a time until `decode` accepts the result.
pub fn flip_until<T>(
    bytes: &[u8],
    rng: &mut StdRng,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    if bytes.is_empty() {
        return None;
    }
    for _ in 0..FLIP_ATTEMPTS_MAX {
        let mut candidate = bytes.to_vec();
        let bit = rng.gen_range(0..candidate.len() * 8);
        candidate[bit / 8] ^= 1 << (bit % 8);
        if let Some(value) = decode(&candidate) {
            return Some(value);
        }
    }
    None
}

/// Flips one seeded bit of `bytes` in place.
pub fn flip_in_place(bytes: &mut [u8], rng: &mut StdRng) -> bool {
    if bytes.is_empty() {
        return false;
    }
    let bit = rng.gen_range(0..bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
    true
}
