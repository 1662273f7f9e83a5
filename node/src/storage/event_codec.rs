//! How an event is kept in `sN.events`: its canonical encoding
//! (docs/CANONICAL_ENCODING.md), as it is or compressed with zstd under a dictionary
//! the shard trained on its own events.
//!
//! fjall compresses blocks with lz4 only, which leaves a workload event at ~205 bytes
//! on disk (docs/bench/history/disk-and-memory.md, "events under trained
//! dictionaries"). Events are small and alike: the same field layout, action names,
//! user agents and metadata keys, over and over, which a dictionary captures and a
//! 16 KiB lz4 block mostly does not. When a shard reaches
//! the counts of [`TRAIN_AT_EVENTS`], a thread trains a dictionary on a sample of its
//! events; from then on apply compresses each event under the newest.
//!
//! A value is told apart by its first byte:
//! - `0x01 ...`: the canonical encoding itself (1 is its version byte);
//! - [`TAG_ZSTD`], dictionary id (1 byte), then a zstd frame without its 4-byte magic
//!   number and without a dictionary id (the byte before says which).
//!
//! Dictionaries are kept in `sN.sm_meta` under `codec_dict` + id, made durable before
//! any value uses them, and never deleted. They are this replica's own: snapshots carry
//! canonical encodings, and a replica that installs one compresses what comes after
//! with its own dictionary. Leaf hashes, proofs and exports only ever see canonical
//! bytes.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use fjall::Keyspace;
use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DDict};

use super::{ShardKeyspaces, StoredValue};
use crate::ledger::event::CANONICAL_VERSION;

/// First byte of a compressed value (a canonical encoding starts with its version).
pub const TAG_ZSTD: u8 = 0x80;
/// A shard trains a dictionary when it holds this many events, and a second one, on
/// a sample of more of them, at the second count: the first soon (the events before
/// it stay as they are), the second on what the shard's tenants really send.
pub const TRAIN_AT_EVENTS: [u64; 2] = [5_000, 200_000];
/// Events a dictionary is trained on, at most (and their bytes, at most). Training
/// takes ~0.3 s of one core per MB of samples here, on the training thread of each
/// shard at once when they reach a count together. zstd's guidance is samples ~100
/// times the dictionary, but on the workload 4,000, 8,000 and 20,000 events (~2, ~4
/// and ~10 MB) gave dictionaries within 0.6% of each other in what they saved
/// (docs/bench/history/ack-latency.md, "Apply reads what was appended; cheaper
/// training"): 8,000 costs 2.5 times less than 20,000.
const TRAIN_SAMPLES_MAX: usize = 8_000;
const TRAIN_SAMPLE_BYTES_MAX: usize = 4 << 20;
/// zstd's own guidance for small records: ~100x smaller than the samples, and 64 KiB
/// measured ~2% smaller values than 32 KiB on the workload.
const DICTIONARY_BYTES_MAX: usize = 64 << 10;
/// zstd level 1. On ~450-byte events levels 1 to 9 were within 4% in size, and level 3
/// (zstd's default) cost ~2 s more node CPU per 1 M workload events than level 1
/// (~6% of the node) for an events keyspace 2-10% smaller
/// (docs/bench/history/ack-latency.md, "Event ids behind the log").
const LEVEL: i32 = 1;
/// A stored value never expands to more than this (canonical events are bounded far
/// below it by validation): a damaged header cannot make a read allocate more.
const CANONICAL_BYTES_MAX: u64 = 4 << 20;
const ZSTD_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
const DICTIONARY_KEY_PREFIX: &[u8] = b"codec_dict";

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value is empty")]
    Empty,
    #[error("value starts with unknown byte {0:#04x}")]
    UnknownTag(u8),
    #[error("value is compressed with dictionary {0}, which this shard does not have")]
    UnknownDictionary(u8),
    #[error("compressed value is damaged: {0}")]
    Damaged(String),
}

/// For apply's lookups and the other paths whose errors are fjall's.
impl From<CodecError> for fjall::Error {
    fn from(error: CodecError) -> fjall::Error {
        fjall::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
    }
}

/// A shard's dictionaries, shared by apply (which compresses) and every reader.
pub struct EventCodec {
    /// Index `id - 1`: ids are dense from 1, in the order they were trained.
    dictionaries: RwLock<Vec<Arc<Dictionary>>>,
    /// A training thread runs, or one failed (not retried until restart).
    training: AtomicBool,
}

struct Dictionary {
    id: u8,
    bytes: Vec<u8>,
    ddict: DDict<'static>,
}

impl std::fmt::Debug for EventCodec {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.dictionaries.read().expect("codec lock").len();
        write!(formatter, "EventCodec({count} dictionaries)")
    }
}

/// Canonical bytes of a stored value: the value itself, or what it expanded to.
pub enum Canonical {
    Stored(StoredValue),
    Expanded(Vec<u8>),
}

impl Canonical {
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Canonical::Stored(value) => value.to_vec(),
            Canonical::Expanded(bytes) => bytes,
        }
    }
}

impl Deref for Canonical {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Canonical::Stored(value) => value,
            Canonical::Expanded(bytes) => bytes,
        }
    }
}

thread_local! {
    /// One decompression context per thread (creating one per read would cost more
    /// than the read), and a scratch buffer to put the magic number back.
    static DECODER: RefCell<(DCtx<'static>, Vec<u8>)> = RefCell::new((DCtx::create(), Vec::new()));
}

impl EventCodec {
    /// The shard's dictionaries as `sm_meta` holds them.
    pub(super) fn load(sm_meta: &Keyspace) -> anyhow::Result<EventCodec> {
        let mut dictionaries = Vec::new();
        for guard in sm_meta.prefix(DICTIONARY_KEY_PREFIX) {
            let (key, value) = guard.into_inner()?;
            let id = key[DICTIONARY_KEY_PREFIX.len()..]
                .first()
                .copied()
                .filter(|_| key.len() == DICTIONARY_KEY_PREFIX.len() + 1)
                .ok_or_else(|| anyhow::anyhow!("bad codec dictionary key {key:02x?}"))?;
            anyhow::ensure!(
                usize::from(id) == dictionaries.len() + 1,
                "codec dictionary {id} follows {}: one is missing",
                dictionaries.len()
            );
            dictionaries.push(Arc::new(Dictionary::new(id, value.to_vec())));
        }
        Ok(EventCodec {
            dictionaries: RwLock::new(dictionaries),
            training: AtomicBool::new(false),
        })
    }

    /// A codec with no dictionary.
    #[cfg(test)]
    fn empty() -> EventCodec {
        EventCodec {
            dictionaries: RwLock::new(Vec::new()),
            training: AtomicBool::new(false),
        }
    }

    fn newest(&self) -> Option<Arc<Dictionary>> {
        self.dictionaries
            .read()
            .expect("codec lock")
            .last()
            .cloned()
    }

    fn dictionary(&self, id: u8) -> Option<Arc<Dictionary>> {
        let dictionaries = self.dictionaries.read().expect("codec lock");
        dictionaries.get(usize::from(id).checked_sub(1)?).cloned()
    }

    pub fn dictionaries(&self) -> usize {
        self.dictionaries.read().expect("codec lock").len()
    }

    /// The canonical bytes of a stored value.
    pub fn canonical<V>(&self, value: V) -> Result<Canonical, CodecError>
    where
        V: Into<StoredValue>,
    {
        let value: StoredValue = value.into();
        match value.first() {
            None => Err(CodecError::Empty),
            Some(&CANONICAL_VERSION) => Ok(Canonical::Stored(value)),
            Some(&TAG_ZSTD) => self.expand(&value).map(Canonical::Expanded),
            Some(&other) => Err(CodecError::UnknownTag(other)),
        }
    }

    fn expand(&self, value: &[u8]) -> Result<Vec<u8>, CodecError> {
        let id = *value.get(1).ok_or(CodecError::Empty)?;
        let dictionary = self
            .dictionary(id)
            .ok_or(CodecError::UnknownDictionary(id))?;
        DECODER.with(|decoder| {
            let (context, frame) = &mut *decoder.borrow_mut();
            frame.clear();
            frame.extend_from_slice(&ZSTD_MAGIC);
            frame.extend_from_slice(&value[2..]);
            let size = match zstd_safe::get_frame_content_size(frame) {
                Ok(Some(size)) if size <= CANONICAL_BYTES_MAX => size as usize,
                other => return Err(CodecError::Damaged(format!("content size {other:?}"))),
            };
            let mut canonical = Vec::with_capacity(size);
            context
                .decompress_using_ddict(&mut canonical, frame, &dictionary.ddict)
                .map_err(|code| CodecError::Damaged(zstd_safe::get_error_name(code).into()))?;
            if canonical.len() != size {
                return Err(CodecError::Damaged(format!(
                    "{} bytes where the frame says {size}",
                    canonical.len()
                )));
            }
            Ok(canonical)
        })
    }

    /// Whether apply should start training a dictionary: the shard has reached the
    /// next count of [`TRAIN_AT_EVENTS`] and no training runs (or failed). Claims the
    /// training when it says yes.
    pub fn claim_training(&self, events: u64) -> bool {
        TRAIN_AT_EVENTS
            .get(self.dictionaries())
            .is_some_and(|&count| events >= count)
            && !self.training.swap(true, Ordering::SeqCst)
    }

    /// Trains a dictionary on a sample of the shard's `count` events (every stream's,
    /// evenly spread), makes it durable in `sm_meta`, then adds it: apply compresses
    /// with it from its next batch. Runs on its own thread, after a claim.
    pub fn train(&self, shard: &ShardKeyspaces, count: u64) -> anyhow::Result<Option<u8>> {
        let result = self.train_claimed(shard, count);
        if matches!(result, Ok(Some(_))) {
            self.training.store(false, Ordering::SeqCst);
        }
        result
    }

    fn train_claimed(&self, shard: &ShardKeyspaces, count: u64) -> anyhow::Result<Option<u8>> {
        let (events, sm_meta) = (&shard.events, &shard.sm_meta);
        let stride = (count / TRAIN_SAMPLES_MAX as u64).max(1) as usize;
        let mut samples = Vec::new();
        let mut sizes = Vec::new();
        for guard in events.iter().step_by(stride) {
            let (_, value) = guard.into_inner()?;
            let canonical = self.canonical(value)?;
            samples.extend_from_slice(&canonical);
            sizes.push(canonical.len());
            if sizes.len() >= TRAIN_SAMPLES_MAX || samples.len() >= TRAIN_SAMPLE_BYTES_MAX {
                break;
            }
        }
        let bytes = zstd::dict::from_continuous(&samples, &sizes, DICTIONARY_BYTES_MAX)?;
        // Worth it only if it beats lz4 on blocks (~2.2x on the workload) by a margin.
        let (raw, compressed) = trial(&bytes, &samples, &sizes)?;
        if compressed * 3 > raw {
            tracing::info!(
                raw,
                compressed,
                "a trained dictionary compresses the shard's events less than 3x; not used"
            );
            return Ok(None);
        }
        let id = u8::try_from(self.dictionaries() + 1)?;
        let mut key = DICTIONARY_KEY_PREFIX.to_vec();
        key.push(id);
        sm_meta.insert(key, &bytes)?;
        // Durable before apply may use it; through the fsync thread, which does not
        // hold the journal lock (every shard's writes would wait for the fsync).
        anyhow::ensure!(shard.syncer.wait(), "the fsync thread is gone");
        self.dictionaries
            .write()
            .expect("codec lock")
            .push(Arc::new(Dictionary::new(id, bytes)));
        Ok(Some(id))
    }
}

impl Dictionary {
    fn new(id: u8, bytes: Vec<u8>) -> Dictionary {
        let ddict = DDict::create(&bytes);
        Dictionary { id, bytes, ddict }
    }
}

/// Compresses on the apply path, under the newest dictionary (none: values are stored
/// as they are).
#[derive(Default)]
pub struct Encoder {
    current: Option<(u8, CCtx<'static>)>,
}

impl Encoder {
    /// Takes up the codec's newest dictionary if it changed.
    pub fn refresh(&mut self, codec: &EventCodec) -> anyhow::Result<()> {
        let newest = codec.newest();
        let current_id = self.current.as_ref().map(|(id, _)| *id);
        if let Some(dictionary) = newest.filter(|dictionary| Some(dictionary.id) != current_id) {
            self.current = Some((dictionary.id, compression_context(&dictionary.bytes)?));
        }
        Ok(())
    }

    /// The compressed value to store for `canonical`; `None`: store it as it is (no
    /// dictionary yet, incompressible, or zstd failed: that is always readable).
    pub fn encode(&mut self, canonical: &[u8]) -> Option<Vec<u8>> {
        let (id, context) = self.current.as_mut()?;
        let mut frame = Vec::with_capacity(canonical.len() / 2 + 64);
        match context.compress2(&mut frame, canonical) {
            Ok(_) if frame.starts_with(&ZSTD_MAGIC) && frame.len() + 2 < canonical.len() => {
                frame[2] = TAG_ZSTD;
                frame[3] = *id;
                frame.drain(..2);
                Some(frame)
            }
            _ => None,
        }
    }

    /// The value to store for `canonical` (tests and trials).
    #[cfg(test)]
    fn value(&mut self, canonical: &[u8]) -> Vec<u8> {
        self.encode(canonical).unwrap_or_else(|| canonical.to_vec())
    }
}

fn compression_context(dictionary: &[u8]) -> anyhow::Result<CCtx<'static>> {
    let mut context = CCtx::create();
    let check = |result: zstd_safe::SafeResult| {
        result
            .map(|_| ())
            .map_err(|code| anyhow::anyhow!("zstd: {}", zstd_safe::get_error_name(code)))
    };
    check(context.set_parameter(CParameter::CompressionLevel(LEVEL)))?;
    check(context.set_parameter(CParameter::ChecksumFlag(false)))?;
    check(context.set_parameter(CParameter::DictIdFlag(false)))?;
    check(context.set_parameter(CParameter::ContentSizeFlag(true)))?;
    check(context.load_dictionary(dictionary))?;
    Ok(context)
}

/// Raw and compressed bytes of the samples under a dictionary.
fn trial(dictionary: &[u8], samples: &[u8], sizes: &[usize]) -> anyhow::Result<(usize, usize)> {
    let mut encoder = Encoder {
        current: Some((1, compression_context(dictionary)?)),
    };
    let (mut raw, mut compressed, mut at) = (0, 0, 0);
    for (number, &size) in sizes.iter().enumerate() {
        if number % 16 == 0 {
            raw += size;
            let sample = &samples[at..at + size];
            compressed += encoder.encode(sample).map_or(size, |value| value.len());
        }
        at += size;
    }
    Ok((raw, compressed))
}

#[cfg(test)]
mod tests {
    use fjall::Slice;
    use tempfile::TempDir;

    use super::*;
    use crate::ledger::event::{encode_canonical, StoredEvent};
    use crate::ledger::{ActorKind, EventRecord, Outcome};
    use crate::storage::{event_key, NodeStore};

    /// Events alike in shape, different in ids and times, like a producer's.
    fn canonical(number: u64) -> Vec<u8> {
        let event = EventRecord {
            event_id: format!("{:032x}", number.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            tenant_id: format!("ten_{:04}", number % 7),
            actor_kind: ActorKind::User,
            actor_id: format!("usr_{:012x}", number % 97),
            actor_email: format!("user{}@example.com", number % 97),
            actor_name: String::new(),
            action: ["auth.login", "record.read", "document.view"][number as usize % 3].into(),
            resource_type: "record".into(),
            resource_id: format!("rec_{:016x}", number % 1_013),
            outcome: Outcome::Success,
            occurred_at_ns: 1_700_000_000_000_000_000 + number as i64 * 7_919,
            request_id: format!("req_{:024x}", number.wrapping_mul(0x2545_f491_4f6c_dd1d)),
            session_id: String::new(),
            ip_address: format!("10.0.{}.{}", number % 13, number % 251),
            user_agent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36".into(),
            metadata_json: format!(r#"{{"method":"sso","mfa":true,"rows":{}}}"#, number % 500),
            subject_id: String::new(),
        };
        let mut out = Vec::new();
        encode_canonical("ten_0001/0", number + 1, 1_700_000_000, &event, &mut out);
        out
    }

    #[test]
    fn values_round_trip_before_and_after_a_dictionary() {
        let dir = TempDir::new().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let keyspaces = store.shard(1).unwrap();
        let codec = &keyspaces.codec;
        let mut encoder = Encoder::default();
        encoder.refresh(codec).unwrap();
        // No dictionary: values are the canonical bytes.
        assert_eq!(encoder.encode(&canonical(1)), None);
        for number in 0..5_000 {
            keyspaces
                .events
                .insert(event_key(1, number + 1), canonical(number))
                .unwrap();
        }
        let [first, second] = TRAIN_AT_EVENTS;
        assert!(!codec.claim_training(first - 1));
        assert!(codec.claim_training(first));
        assert!(!codec.claim_training(first), "claimed once");
        let id = codec.train(&keyspaces, 5_000).unwrap();
        assert_eq!(id, Some(1));
        assert!(
            !codec.claim_training(second - 1),
            "the second waits for its count"
        );

        encoder.refresh(codec).unwrap();
        let raw = canonical(9_999);
        let value = encoder.value(&raw);
        assert_eq!(&value[..2], &[TAG_ZSTD, 1]);
        assert!(
            value.len() * 3 < raw.len(),
            "{} of {}",
            value.len(),
            raw.len()
        );
        let expanded = codec.canonical(Slice::from(value.clone())).unwrap();
        assert_eq!(&*expanded, &raw[..]);
        StoredEvent::decode_canonical(&expanded).unwrap();
        // Values stored before the dictionary read as they are.
        let old = keyspaces.events.get(event_key(1, 1)).unwrap().unwrap();
        assert_eq!(&*codec.canonical(old).unwrap(), &canonical(0)[..]);

        // The second dictionary, on a sample of events of which some are compressed;
        // values of the first stay readable.
        assert!(codec.claim_training(second));
        let id = codec.train(&keyspaces, second).unwrap();
        assert_eq!(id, Some(2));
        assert!(!codec.claim_training(u64::MAX), "two at most");
        encoder.refresh(codec).unwrap();
        let newer = encoder.value(&raw);
        assert_eq!(&newer[..2], &[TAG_ZSTD, 2]);
        assert_eq!(
            &*codec.canonical(Slice::from(newer.clone())).unwrap(),
            &raw[..]
        );

        // After a restart the dictionaries are loaded from the store.
        let reloaded = EventCodec::load(&keyspaces.sm_meta).unwrap();
        assert_eq!(reloaded.dictionaries(), 2);
        assert_eq!(
            &*reloaded.canonical(Slice::from(value.clone())).unwrap(),
            &raw[..]
        );
        assert_eq!(&*reloaded.canonical(Slice::from(newer)).unwrap(), &raw[..]);

        // What does not decode is an error, never a panic or another event.
        let mut unknown = value.clone();
        unknown[1] = 3;
        assert!(matches!(
            codec.canonical(Slice::from(unknown)),
            Err(CodecError::UnknownDictionary(3))
        ));
        assert!(matches!(
            codec.canonical(Slice::from(&[0x42u8, 1, 2][..])),
            Err(CodecError::UnknownTag(0x42))
        ));
        assert!(codec.canonical(Slice::from(&value[..6])).is_err());
        assert!(EventCodec::empty().canonical(Slice::from(value)).is_err());
    }
}
