//! Durable storage on fjall: one `Database` per node (each opens its own worker
//! threads), a set of keyspaces per shard.
//!
//! Per shard `N`:
//!
//! | keyspace        | key                              | value                         |
//! |-----------------|----------------------------------|-------------------------------|
//! | `sN.raft_log`   | log index (u64 BE)               | bincode `Entry`               |
//! | `sN.raft_meta`  | `vote`, `committed`, `purged`    | bincode                       |
//! | `sN.events`     | stream_no (u32 BE) + seq (u64 BE)| canonical event (v1), or compressed ([`event_codec`]) |
//! | `sN.dedup`      | tenant_no (u32 BE) + event_id, UUIDs and ULIDs packed ([`dedup_key`]) | stream_no (u32 BE) + seq (BE); in the dedup database, behind the log ([`dedup`]) |
//! | `sN.tenants`    | tenant_id                        | bincode `TenantState`         |
//! | `sN.chain`      | `b` stream_no block_index        | `BlockRecord` (hashes, header)|
//! |                 | `e` stream_no last_seq           | block_index (u64 BE)          |
//! |                 | `c` stream_no tree_size          | signed checkpoint note        |
//! | `sN.sm_meta`    | `applied`, `membership`, `snapshot`, `dedup_keys`, `dedup_frontier`; `codec_dict` + id | bincode; a zstd dictionary |
//! | `sN.feed`       | applied log index (u64 BE)       | [`FeedRuns`]: what that apply batch appended |
//! | `sN.tindex`     | stream_no, occurred_at, seq of a block's last entry | up to 64 entries (position + filter summary): the time index (behind the log, `index::time_blocks`) |
//!
//! `feed` is the queue between apply and the indexer (`crate::index`): apply writes
//! one small key per batch, in the batch; the indexer deletes it once the events are
//! in the committed indexes. `tindex` is written only by the indexer.
//! A tenant's newest events are one contiguous range of `sN.events`. Per event, apply
//! writes one key, the event (sequential, cheap); its id goes to the shard's dedup
//! overlay in memory and reaches `sN.dedup` in sorted runs ([`dedup`]).

// openraft's storage traits fix the error type, `openraft::StorageError` (224 bytes);
// boxing it on our side would only add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod applied;
pub mod dedup;
pub mod event_codec;
pub mod faults;
mod install;
pub mod log_store;
mod migrate;
pub mod pool;
pub mod publish;
pub mod recent;
pub mod shard_store;
mod snapshot_file;
pub mod snapshot_name;
pub mod state_machine;
pub mod syncer;
#[doc(hidden)]
pub mod tamper;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::config::{BlockSizePolicy, CompressionPolicy, FilterPolicy};
use fjall::{CompressionType, Database, Keyspace, KeyspaceCreateOptions};

use crate::ledger::routing::ShardId;
pub use applied::AppliedProgress;
pub use event_codec::EventCodec;
pub use log_store::LogStore;
pub use shard_store::{NodeMeta, StoreDb, StoreError, StoredValue, TimeBlock, WriteBatch};
pub use state_machine::StateMachine;
pub use syncer::Syncer;
use watchdog::Watchdog;

/// Memtable sizes per keyspace. fjall's default is 64 MiB for every keyspace, which
/// for 6 keyspaces and 4 shards could hold 1.5 GiB; these bound a shard's memtables to
/// ~28 MiB (plus sealed ones waiting for their flush). Smaller memtables also make the
/// skiplist searches of inserts and dedup lookups cheaper (fewer levels, fewer cache
/// misses): 8 MiB measured ~5% more ingest than 32 MiB, with 35% less peak memory.
const MEMTABLE_BYTES_MAX_BULK: u64 = 8 << 20;
const MEMTABLE_BYTES_MAX_SMALL: u64 = 1 << 20;

/// fjall's own memtable bound, set out of reach: the watchdog rotates memtables at the
/// bounds above (`watchdog.rs`), because fjall's rotation requests can deadlock its
/// workers. (fjall keeps a keyspace's options from its creation: data directories
/// created before this keep fjall's rotation at the old bounds, and the watchdog's
/// rotations only race it.)
const FJALL_MEMTABLE_BYTES_OUT_OF_REACH: u64 = 1 << 30;

/// Data block size of the events keyspaces (fjall's default is 4 KiB). Measured on
/// workload events of one stream with lz4: 4 KiB blocks ~204 bytes/event, 16 KiB ~155,
/// 32 KiB ~137; a point read decompresses a whole block (~5 µs at 16 KiB).
const EVENTS_BLOCK_BYTES: u32 = 16 << 10;

/// Bound on all of fjall's journal files (of 64 MiB each), kept by the watchdog: a
/// journal file is kept until every keyspace with writes in it has flushed them, and
/// fjall's default bound (512 MiB) was the largest part of a single node's data
/// directory after 1 M events.
const JOURNALS_BYTES_MAX: u64 = 256 << 20;

/// A database opened under `data_dir`, or an error that says what to do: fjall's own
/// for a directory another process holds is `Locked`, nothing more.
fn opened(data_dir: &Path, result: fjall::Result<Database>) -> anyhow::Result<Database> {
    result.map_err(|error| match error {
        fjall::Error::Locked => anyhow::anyhow!(
            "data directory {} is in use by another traild (it holds the directory's \
             lock): stop that node first, or give this one another --data-dir",
            data_dir.display()
        ),
        error => anyhow::Error::new(error)
            .context(format!("opening the storage in {}", data_dir.display())),
    })
}

/// The storage engine's memory and journal at one moment. Memtables are bounded per
/// keyspace and journals are deleted once every keyspace flushed past them, so these
/// stay bounded; a climb means flushes are not keeping up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageMetrics {
    /// Bytes in memtables, active and sealed, of every keyspace.
    pub memtable_bytes: u64,
    /// Bytes of journal files on disk (0 when they cannot be listed).
    pub journal_bytes: u64,
    pub journals: u64,
    /// Sealed memtables waiting for their flush.
    pub flushes_pending: u64,
}

/// The node's storage: the fjall database and the fsync coalescer in front of it.
#[derive(Clone)]
pub struct NodeStore {
    /// Private to `storage/`: code outside reads and writes through typed methods
    /// ([`NodeStore::store_db`], [`NodeStore::shard`], [`NodeStore::node_meta`]).
    db: Database,
    pub syncer: Syncer,
    /// The event-id indexes, in a database of their own (`dedup.rs`).
    pub dedup: dedup::DedupStore,
    pub data_dir: PathBuf,
    watchdog: Watchdog,
    /// Planted bugs and crash points of the simulation; none in `traild`.
    faults: faults::StoreFaults,
}

impl NodeStore {
    /// Opens (or creates) the node's database under `data_dir/db`, with fjall's
    /// default block cache (32 MiB).
    pub fn open(data_dir: &Path) -> anyhow::Result<NodeStore> {
        NodeStore::open_with_cache(data_dir, 32 << 20)
    }

    /// Opens (or creates) the node's database with a block cache of `cache_bytes`.
    pub fn open_with_cache(data_dir: &Path, cache_bytes: u64) -> anyhow::Result<NodeStore> {
        NodeStore::open_with_faults(data_dir, cache_bytes, faults::StoreFaults::none())
    }

    /// Opens (or creates) the node's database with the simulation's `faults`.
    pub fn open_with_faults(
        data_dir: &Path,
        cache_bytes: u64,
        faults: faults::StoreFaults,
    ) -> anyhow::Result<NodeStore> {
        if data_dir.exists() && !data_dir.is_dir() {
            anyhow::bail!(
                "data directory {}: is a file, not a directory",
                data_dir.display()
            );
        }
        std::fs::create_dir_all(data_dir).map_err(|error| {
            anyhow::anyhow!(
                "data directory {}: cannot create it: {error}",
                data_dir.display()
            )
        })?;
        let db = Database::builder(data_dir.join("db"))
            .cache_size(cache_bytes)
            // Group commit is ours: the syncer persists the journal once for every
            // Raft append that arrived while the previous fsync ran.
            .manual_journal_persist(true)
            // The journals are bounded by the watchdog (`watchdog.rs`): fjall's own
            // enforcement asks its workers for rotations, which can deadlock them.
            .max_journaling_size(u64::MAX / 2)
            .open();
        let db = opened(data_dir, db)?;
        let syncer = Syncer::start(db.clone(), &data_dir.join("db"));
        let dedup = dedup::DedupStore::open(
            &data_dir.join("dedup"),
            syncer.clone(),
            watchdog::GC_INTERVAL,
        )?;
        let watchdog = Watchdog::start(
            &db,
            watchdog::Bounds {
                journal_bytes: JOURNALS_BYTES_MAX,
                gc_interval: watchdog::GC_INTERVAL,
            },
        );
        Ok(NodeStore {
            db,
            syncer,
            dedup,
            data_dir: data_dir.to_path_buf(),
            watchdog,
            faults,
        })
    }

    /// The storage engine's memory and journal, for the metrics endpoint.
    pub fn metrics(&self) -> StorageMetrics {
        StorageMetrics {
            memtable_bytes: self.db.write_buffer_size(),
            journal_bytes: self.db.journal_disk_space().unwrap_or(0),
            journals: self.db.journal_count() as u64,
            flushes_pending: self.db.outstanding_flushes() as u64,
        }
    }

    /// The node's own small keyspace (`node`: layout, format), watched like the
    /// shards' (so it never holds an old journal back).
    pub fn node_meta(&self) -> anyhow::Result<shard_store::NodeMeta> {
        let keyspace = self.db.keyspace("node", || {
            KeyspaceCreateOptions::default().max_memtable_size(FJALL_MEMTABLE_BYTES_OUT_OF_REACH)
        })?;
        self.watchdog
            .watch(keyspace.clone(), MEMTABLE_BYTES_MAX_SMALL);
        Ok(shard_store::NodeMeta(keyspace))
    }

    pub fn shard(&self, shard: ShardId) -> anyhow::Result<ShardKeyspaces> {
        let open = |name: &str, memtable_bytes_max: u64| -> anyhow::Result<Keyspace> {
            let options = || {
                let options = KeyspaceCreateOptions::default()
                    .max_memtable_size(FJALL_MEMTABLE_BYTES_OUT_OF_REACH);
                match name {
                    // Entries are whole batches (up to MiBs) that are read rarely and
                    // purged wholesale: keep them out of the LSM's compactions.
                    "raft_log" => {
                        options.with_kv_separation(Some(fjall::KvSeparationOptions::default()))
                    }
                    // The bulk of the disk (docs/BENCHMARKS.md, "Disk and memory"): events of one
                    // stream side by side compress better in larger blocks (lz4 is
                    // fjall's only codec), and on every level (fjall leaves its first
                    // two uncompressed). Reads of an event always find it, so the
                    // last level needs no bloom filter.
                    "events" => options
                        .data_block_size_policy(BlockSizePolicy::all(EVENTS_BLOCK_BYTES))
                        .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
                        .expect_point_read_hits(true),
                    // Only ever read by range: no bloom filters (fjall's default builds
                    // one for every table, at 0.01% false positives on the first level,
                    // hashing every key of every flush and compaction for nothing).
                    "tindex" => options
                        .data_block_compression_policy(CompressionPolicy::all(CompressionType::Lz4))
                        .filter_policy(FilterPolicy::disabled()),
                    _ => options,
                }
            };
            let keyspace = self.db.keyspace(&format!("s{shard}.{name}"), options)?;
            self.watchdog.watch(keyspace.clone(), memtable_bytes_max);
            Ok(keyspace)
        };
        let sm_meta = open("sm_meta", MEMTABLE_BYTES_MAX_SMALL)?;
        let keyspaces = ShardKeyspaces {
            shard,
            raft_log: open("raft_log", MEMTABLE_BYTES_MAX_BULK)?,
            raft_meta: open("raft_meta", MEMTABLE_BYTES_MAX_SMALL)?,
            events: open("events", MEMTABLE_BYTES_MAX_BULK)?,
            dedup: self.dedup.shard(shard, sm_meta.clone())?,
            tenants: open("tenants", MEMTABLE_BYTES_MAX_SMALL)?,
            chain: open("chain", MEMTABLE_BYTES_MAX_SMALL)?,
            sm_meta: sm_meta.clone(),
            feed: open("feed", MEMTABLE_BYTES_MAX_SMALL)?,
            tindex: open("tindex", MEMTABLE_BYTES_MAX_BULK)?,
            codec: Arc::new(EventCodec::load(&sm_meta)?),
            recent: Arc::default(),
            syncer: self.syncer.clone(),
            snapshot_dir: Arc::new(
                self.data_dir
                    .join("snapshots")
                    .join(format!("shard-{shard}")),
            ),
            faults: self.faults.clone(),
        };
        Ok(keyspaces)
    }
}

/// Handles to one shard's keyspaces. Cheap to clone. Code outside `storage/` reads and
/// writes them through typed methods only (`shard_store`, `LogStore`): the keyspaces
/// are private here.
#[derive(Clone)]
pub struct ShardKeyspaces {
    pub shard: ShardId,
    raft_log: Keyspace,
    raft_meta: Keyspace,
    events: Keyspace,
    /// In the node's dedup database, with the ids not yet in it (`dedup.rs`).
    dedup: Arc<dedup::DedupIndex>,
    tenants: Keyspace,
    chain: Keyspace,
    sm_meta: Keyspace,
    feed: Keyspace,
    tindex: Keyspace,
    /// How `events` values are compressed (one per open shard, shared by its clones).
    pub codec: Arc<EventCodec>,
    /// The latest applied batches' events, for the indexer (`recent.rs`).
    pub recent: Arc<recent::RecentBatches>,
    pub snapshot_dir: Arc<PathBuf>,
    /// The node's fsync thread: what makes the journal durable without holding its
    /// lock (`syncer.rs`).
    pub syncer: Syncer,
    /// The simulation's planted bugs and crash points (`faults.rs`); none in `traild`.
    pub faults: faults::StoreFaults,
}

impl ShardKeyspaces {
    /// Each keyspace with its name (`sN.<name>` in the database; the dedup keyspace's
    /// is `sN.dedup[.generation]`, in the dedup database).
    fn named(&self) -> [(&'static str, Keyspace); 9] {
        [
            ("raft_log", self.raft_log.clone()),
            ("raft_meta", self.raft_meta.clone()),
            ("events", self.events.clone()),
            ("dedup", self.dedup.keyspace()),
            ("tenants", self.tenants.clone()),
            ("chain", self.chain.clone()),
            ("sm_meta", self.sm_meta.clone()),
            ("feed", self.feed.clone()),
            ("tindex", self.tindex.clone()),
        ]
    }

    /// The disk space of each keyspace (its SST and blob files; journals are counted
    /// apart, [`StorageMetrics`]), with the keyspace's name.
    pub fn disk_bytes(&self) -> [(&'static str, u64); 9] {
        self.named()
            .map(|(name, keyspace)| (name, keyspace.disk_space()))
    }
}

/// Checks the ids a shard's Raft would start on against what openraft requires
/// (`RaftState::validate`): with `purge_upto` the applied id when the log ends below it
/// (openraft then purges to it at startup) and the purged id otherwise,
/// `purge_upto <= snapshot <= applied` (no snapshot: `purge_upto <= applied`; openraft
/// builds one). A violation means log entries that are in no snapshot and were never
/// applied (docs/SIMULATION.md, seed 11974): refuse to start rather than run on it.
pub fn check_startable(
    log: &crate::consensus::LogState,
    applied: Option<crate::consensus::LogId>,
    snapshot: Option<crate::consensus::LogId>,
) -> Result<(), String> {
    let purge_upto = if log.last_log_id < applied {
        applied
    } else {
        log.last_purged_log_id
    };
    let show = |id: Option<crate::consensus::LogId>| {
        id.map_or_else(|| "none".to_string(), |id| id.to_string())
    };
    let problem = match snapshot {
        Some(snapshot) if purge_upto > Some(snapshot) => {
            Some("the log is purged past the snapshot")
        }
        Some(snapshot) if Some(snapshot) > applied => {
            Some("the snapshot is ahead of the applied id")
        }
        None if purge_upto > applied => Some("the log is purged past the applied id"),
        _ => None,
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(format!(
            "{problem}: log purged to {}, last log id {}, applied {}, snapshot {}",
            show(log.last_purged_log_id),
            show(log.last_log_id),
            show(applied),
            show(snapshot),
        )),
    }
}

/// `stream_no (u32 BE), seq (u64 BE)`.
fn event_key(stream_no: u32, seq: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&stream_no.to_be_bytes());
    key[4..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// Tags of a packed event id in a dedup key (event ids are printable ASCII, so an id
/// kept as text never starts with one).
const DEDUP_UUID: u8 = 0x01;
const DEDUP_ULID: u8 = 0x02;

/// The dedup key of an event id: `tenant_no (u32 BE)`, then the id packed into 17
/// bytes when it is a UUID in its canonical lowercase text form ([`DEDUP_UUID`] + its
/// 16 bytes) or a ULID in its canonical uppercase form ([`DEDUP_ULID`] + 16 bytes),
/// else its text. A packed id is exactly one text, so two ids never share a key. A
/// random UUID is 36 hex characters that lz4 barely shrinks: packed, the keyspace
/// takes ~15 bytes less per event.
fn dedup_key(tenant_no: u32, event_id: &str) -> Vec<u8> {
    let packed = canonical_uuid(event_id)
        .map(|bytes| (DEDUP_UUID, bytes))
        .or_else(|| canonical_ulid(event_id).map(|bytes| (DEDUP_ULID, bytes)));
    // Allocated to its exact length: the overlay keeps it as a boxed slice
    // (`dedup.rs`), which would otherwise reallocate it.
    let id_len = packed.map_or(event_id.len(), |(_, bytes)| 1 + bytes.len());
    let mut key = Vec::with_capacity(4 + id_len);
    key.extend_from_slice(&tenant_no.to_be_bytes());
    match packed {
        Some((tag, bytes)) => {
            key.push(tag);
            key.extend_from_slice(&bytes);
        }
        None => key.extend_from_slice(event_id.as_bytes()),
    }
    key
}

/// The key a dedup key of an earlier layout (the id always as text) has now; `None`
/// when it is the same.
fn repacked_dedup_key(key: &[u8]) -> Option<Vec<u8>> {
    let (tenant_no, id) = key.split_first_chunk::<4>()?;
    let id = std::str::from_utf8(id).ok()?;
    let repacked = dedup_key(u32::from_be_bytes(*tenant_no), id);
    (repacked != key).then_some(repacked)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in lowercase hex, as 16 bytes.
fn canonical_uuid(text: &str) -> Option<[u8; 16]> {
    let text = text.as_bytes();
    if text.len() != 36 || [8, 13, 18, 23].iter().any(|&at| text[at] != b'-') {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut digits = text.iter().filter(|&&c| c != b'-');
    for byte in &mut bytes {
        let high = lower_hex(*digits.next()?)?;
        let low = lower_hex(*digits.next()?)?;
        *byte = high << 4 | low;
    }
    Some(bytes)
}

fn lower_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// A ULID in the form `ulid` prints (26 uppercase Crockford characters), as 16 bytes.
fn canonical_ulid(text: &str) -> Option<[u8; 16]> {
    if text.len() != 26 {
        return None;
    }
    let ulid = ulid::Ulid::from_string(text).ok()?;
    // The parser also takes lowercase and look-alike letters: only the one text that
    // prints back the same is packed.
    (ulid.to_string() == text).then(|| ulid.to_bytes())
}

fn position_value(stream_no: u32, seq: u64) -> [u8; 12] {
    event_key(stream_no, seq)
}

fn decode_position(value: &[u8]) -> Option<(u32, u64)> {
    if value.len() != 12 {
        return None;
    }
    let stream_no = u32::from_be_bytes(value[..4].try_into().ok()?);
    let seq = u64::from_be_bytes(value[4..].try_into().ok()?);
    Some((stream_no, seq))
}

/// Key prefixes of the `chain` keyspace.
const CHAIN_BLOCK: u8 = b'b';
const CHAIN_BLOCK_END: u8 = b'e';
const CHAIN_CHECKPOINT: u8 = b'c';
/// The roots of the stream tree's perfect subtrees that block `number` completes, of 2,
/// 4, 8, ... blocks, concatenated (32 bytes each, one per trailing one bit of the block
/// index; absent when there are none): on average one hash per two blocks.
const CHAIN_SUBTREES: u8 = b't';

/// `prefix, stream_no (u32 BE), number (u64 BE)`: blocks by index, block ends by last
/// seq, checkpoints by tree size, subtree roots by the block that completes them. Each
/// kind of a stream is one ordered range.
fn chain_key(prefix: u8, stream_no: u32, number: u64) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = prefix;
    key[1..5].copy_from_slice(&stream_no.to_be_bytes());
    key[5..].copy_from_slice(&number.to_be_bytes());
    key
}

/// The number at the end of a chain key.
fn chain_key_number(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(5..13)?.try_into().ok()?))
}

/// What one apply batch appended, as the indexer's feed entry: per stream, one run of
/// consecutive seqs (a batch appends each stream's events in seq order). Or a reset:
/// the shard's state was replaced (a snapshot was installed), so its indexes are rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FeedRuns {
    /// `(stream_no, first_seq, count)`, in the order streams first appear.
    pub runs: Vec<(u32, u64, u32)>,
    pub reset: bool,
}

const FEED_RUNS: u8 = 1;
const FEED_RESET: u8 = 2;

impl FeedRuns {
    pub fn add(&mut self, stream_no: u32, seq: u64) {
        if let Some(run) = self.runs.iter_mut().rev().find(|run| run.0 == stream_no) {
            debug_assert_eq!(run.1 + u64::from(run.2), seq, "a stream appends in order");
            run.2 += 1;
        } else {
            self.runs.push((stream_no, seq, 1));
        }
    }

    pub fn reset() -> FeedRuns {
        FeedRuns {
            runs: Vec::new(),
            reset: true,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && !self.reset
    }

    pub fn encode(&self) -> Vec<u8> {
        if self.reset {
            return vec![FEED_RESET];
        }
        let mut out = Vec::with_capacity(1 + 16 * self.runs.len());
        out.push(FEED_RUNS);
        for (stream_no, first_seq, count) in &self.runs {
            out.extend_from_slice(&stream_no.to_be_bytes());
            out.extend_from_slice(&first_seq.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<FeedRuns> {
        match bytes.split_first()? {
            (&FEED_RESET, []) => Some(FeedRuns::reset()),
            (&FEED_RUNS, rest) if rest.len() % 16 == 0 => Some(FeedRuns {
                runs: rest
                    .chunks_exact(16)
                    .map(|run| {
                        (
                            u32::from_be_bytes(run[..4].try_into().expect("4 bytes")),
                            u64::from_be_bytes(run[4..12].try_into().expect("8 bytes")),
                            u32::from_be_bytes(run[12..].try_into().expect("4 bytes")),
                        )
                    })
                    .collect(),
                reset: false,
            }),
            _ => None,
        }
    }
}

/// `occurred_at` as a key part that sorts like the number (sign bit flipped).
fn time_key_part(occurred_at_ns: i64) -> [u8; 8] {
    ((occurred_at_ns as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_key_part_decode(bytes: [u8; 8]) -> i64 {
    (u64::from_be_bytes(bytes) ^ (1 << 63)) as i64
}

/// A time-index key: `stream_no, occurred_at, seq` (20 bytes) of a block's last entry.
fn tindex_key(stream_no: u32, occurred_at_ns: i64, seq: u64) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..4].copy_from_slice(&stream_no.to_be_bytes());
    key[4..12].copy_from_slice(&time_key_part(occurred_at_ns));
    key[12..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// `(occurred_at, seq)` of a time-index key of the expected stream.
fn tindex_key_decode(key: &[u8], stream_no: u32) -> Option<(i64, u64)> {
    if key.len() != 20 || key[..4] != stream_no.to_be_bytes() {
        return None;
    }
    let occurred_at_ns = time_key_part_decode(key[4..12].try_into().ok()?);
    let seq = u64::from_be_bytes(key[12..].try_into().ok()?);
    Some((occurred_at_ns, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second node on a data directory in use is refused, and told why and what to
    /// do, not fjall's bare `Locked`.
    #[test]
    fn a_data_directory_in_use_is_refused_with_its_path() {
        let dir = tempfile::TempDir::new().unwrap();
        let _first = NodeStore::open(dir.path()).unwrap();
        let error = NodeStore::open(dir.path())
            .err()
            .expect("the directory is locked");
        let message = format!("{error:#}");
        assert!(message.contains("in use by another traild"), "{message}");
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("--data-dir"), "{message}");
    }

    #[test]
    fn a_data_directory_that_cannot_be_made_is_named() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let message = format!("{:#}", NodeStore::open(&file).err().expect("a file"));
        assert!(message.contains("is a file, not a directory"), "{message}");
        assert!(message.contains(&file.display().to_string()), "{message}");
        let below_file = file.join("data");
        let message = format!(
            "{:#}",
            NodeStore::open(&below_file).err().expect("under a file")
        );
        assert!(message.contains("cannot create it"), "{message}");
        assert!(
            message.contains(&below_file.display().to_string()),
            "{message}"
        );
    }

    /// The journals' blocks are allocated when they are created (fjall patch 4,
    /// vendor/fjall/PATCHES.md): appends into a sparse journal waited for ext4's
    /// extent conversions, with the journal lock held. Linux file systems with
    /// `fallocate` only (ext4, xfs, btrfs, tmpfs); others fall back to the hole.
    #[cfg(target_os = "linux")]
    #[test]
    fn journal_files_are_allocated_not_sparse() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::TempDir::new().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let keyspaces = store.shard(1).unwrap();
        keyspaces.sm_meta.insert("k", "v").unwrap();
        let journals: Vec<_> = std::fs::read_dir(dir.path().join("db"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "jnl"))
            .collect();
        assert!(
            !journals.is_empty(),
            "no journal in {}",
            dir.path().display()
        );
        for journal in journals {
            let meta = std::fs::metadata(&journal).unwrap();
            assert!(
                meta.blocks() * 512 >= meta.len(),
                "{}: {} bytes long, {} allocated",
                journal.display(),
                meta.len(),
                meta.blocks() * 512
            );
        }
    }

    #[test]
    fn feed_runs_round_trip() {
        let mut feed = FeedRuns::default();
        for (stream, seq) in [(3, 10), (1, 1), (3, 11), (3, 12), (1, 2)] {
            feed.add(stream, seq);
        }
        assert_eq!(feed.runs, vec![(3, 10, 3), (1, 1, 2)]);
        assert_eq!(FeedRuns::decode(&feed.encode()), Some(feed));
        assert_eq!(
            FeedRuns::decode(&FeedRuns::reset().encode()),
            Some(FeedRuns::reset())
        );
        assert_eq!(FeedRuns::decode(&[1, 2, 3]), None);
        assert_eq!(FeedRuns::decode(&[]), None);
    }

    #[test]
    fn startable_ids() {
        use crate::consensus::{LogId, LogState};
        let id = |index| Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index));
        let log = |purged, last| LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        };
        assert!(check_startable(&log(None, None), None, None).is_ok());
        assert!(check_startable(&log(id(7), id(20)), id(15), id(7)).is_ok());
        // A log that ends below the applied id is purged to it at startup.
        assert!(check_startable(&log(id(7), id(9)), id(15), id(15)).is_ok());
        assert!(check_startable(&log(id(3), id(9)), id(9), None).is_ok());
        // Seed 11974: the purge without the install.
        let error = check_startable(&log(id(15), id(15)), id(9), id(7)).unwrap_err();
        assert!(
            error.starts_with("the log is purged past the snapshot"),
            "{error}"
        );
        // Seed 11974: the installed state without the snapshot pointer.
        assert!(check_startable(&log(id(7), id(9)), id(15), id(7)).is_err());
        assert!(check_startable(&log(id(10), id(12)), id(9), None).is_err());
        assert!(check_startable(&log(None, id(12)), id(9), id(10)).is_err());
    }

    #[test]
    fn dedup_keys_pack_canonical_uuids_and_ulids_only() {
        let uuid = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let key = dedup_key(7, uuid);
        assert_eq!(key.len(), 4 + 17);
        assert_eq!(&key[..5], &[0, 0, 0, 7, DEDUP_UUID]);
        assert_eq!(key[5..9], [0x0f, 0x8f, 0xad, 0x5b]);
        let ulid = ulid::Ulid::new().to_string();
        assert_eq!(dedup_key(7, &ulid)[4], DEDUP_ULID);
        assert_eq!(dedup_key(7, &ulid).len(), 4 + 17);
        // Other texts of the same values are other ids, so they keep their text.
        for text in [
            uuid.to_uppercase(),
            uuid.replace('-', ""),
            ulid.to_lowercase(),
            format!("{uuid}x"),
            "evt_1".to_string(),
            "0f8fad5b-d9cb-469f-a165-70867728950g".to_string(),
        ] {
            assert_eq!(dedup_key(7, &text)[4..], *text.as_bytes(), "{text}");
        }
        // Distinct ids, distinct keys; tenants apart.
        assert_ne!(dedup_key(7, uuid), dedup_key(7, &uuid.to_uppercase()));
        assert_ne!(dedup_key(7, uuid), dedup_key(8, uuid));
        // An earlier layout's key (the id as text) and its packed form.
        let mut text_key = 7u32.to_be_bytes().to_vec();
        text_key.extend_from_slice(uuid.as_bytes());
        assert_eq!(repacked_dedup_key(&text_key), Some(key.clone()));
        assert_eq!(repacked_dedup_key(&key), None);
        assert_eq!(repacked_dedup_key(&dedup_key(7, "evt_1")), None);
    }

    #[test]
    fn time_keys_sort_like_times() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(tindex_key(7, pair[0], 9) < tindex_key(7, pair[1], 1));
            assert_eq!(time_key_part_decode(time_key_part(pair[0])), pair[0]);
        }
        assert_eq!(tindex_key_decode(&tindex_key(7, -5, 9), 7), Some((-5, 9)));
        assert_eq!(tindex_key_decode(&tindex_key(7, -5, 9), 8), None);
    }
}
