//! Typed reads of one shard's committed state: the seam between the keyspaces (and
//! their key layouts, `storage/mod.rs`) and the code that serves reads (`shard/`).
//! Callers name streams, seqs, blocks and tenants; only this module builds and parses
//! keys. Values come back as stored (a [`StoredValue`]: no copy), and decoding them
//! stays with the caller, which knows what a damaged record means for its answer.

use std::ops::{Bound, RangeBounds};

use super::{
    chain_key, chain_key_number, decode_position, dedup_key, event_key, tindex_key,
    tindex_key_decode, ShardKeyspaces, CHAIN_BLOCK, CHAIN_BLOCK_END, CHAIN_CHECKPOINT,
    CHAIN_SUBTREES,
};

/// Why a read or write of the store failed: the engine's I/O or journal error, kept
/// whole (as its `source`) for the logs.
#[derive(Debug)]
pub struct StoreError(fjall::Error);

impl std::fmt::Display for StoreError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, formatter)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

// Public as every trait impl is; only `storage/` holds fjall errors to convert (t01).
impl From<fjall::Error> for StoreError {
    fn from(error: fjall::Error) -> StoreError {
        StoreError(error)
    }
}

/// A value as the store holds it: shared bytes, cheap to clone, dereferences to `[u8]`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredValue(pub(super) fjall::Slice);

impl std::ops::Deref for StoredValue {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for StoredValue {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for StoredValue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, formatter)
    }
}

// Public as every trait impl is; only `storage/` holds fjall slices to convert (t01).
impl From<fjall::Slice> for StoredValue {
    fn from(slice: fjall::Slice) -> StoredValue {
        StoredValue(slice)
    }
}

/// `(key, value)` of a keyspace read, as the seam's types.
fn stored_pair(
    pair: fjall::Result<(fjall::Slice, fjall::Slice)>,
) -> Result<(StoredValue, StoredValue), StoreError> {
    let (key, value) = pair?;
    Ok((StoredValue(key), StoredValue(value)))
}

/// A value read from a keyspace, as the seam's types.
fn stored(value: fjall::Result<Option<fjall::Slice>>) -> Result<Option<StoredValue>, StoreError> {
    Ok(value?.map(StoredValue))
}

/// A block of the time index as stored: the last position `(occurred_at_ns, seq)` its
/// key names (`None` when the key is not a time-index key of the stream), and its
/// encoded entries (`index::time_blocks`).
pub type TimeBlock = (Option<(i64, u64)>, StoredValue);

/// A batch of writes the indexer commits at once ([`StoreDb::batch`]): only this
/// module's methods add writes to it, so its keys are always storage's own.
pub struct WriteBatch(fjall::OwnedWriteBatch);

impl WriteBatch {
    /// Writes the batch (one journal write; durable at the next fsync).
    pub fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit()?)
    }
}

impl ShardKeyspaces {
    /// The tenant's state record (bincode `TenantState`), if the tenant exists.
    pub fn tenant_record(&self, tenant_id: &str) -> Result<Option<StoredValue>, StoreError> {
        stored(self.tenants.get(tenant_id.as_bytes()))
    }

    /// Where the tenant's event id was recorded, `(stream_no, seq)`: the dedup probe
    /// (the overlay first, then the dedup keyspace).
    pub fn event_position(
        &self,
        tenant_no: u32,
        event_id: &str,
    ) -> Result<Option<(u32, u64)>, StoreError> {
        Ok(self
            .dedup
            .get(&dedup_key(tenant_no, event_id))?
            .and_then(|position| decode_position(&position)))
    }

    /// Event ids applied and not yet in the dedup database's tables (a metric).
    pub fn dedup_overlay_len(&self) -> usize {
        self.dedup.overlay_len()
    }

    /// The stored value of event `seq` of the stream (canonical, or compressed:
    /// `event_codec`).
    pub fn event_value(&self, stream_no: u32, seq: u64) -> Result<Option<StoredValue>, StoreError> {
        stored(self.events.get(event_key(stream_no, seq)))
    }

    /// The stored events of the stream with seqs in `seqs`, in seq order (reversible),
    /// each with the seq its key names.
    pub fn event_values(
        &self,
        stream_no: u32,
        seqs: impl RangeBounds<u64>,
    ) -> impl DoubleEndedIterator<Item = Result<(u64, StoredValue), StoreError>> + 'static {
        let key = |bound: Bound<&u64>, unbounded: u64| match bound {
            Bound::Included(&seq) => Bound::Included(event_key(stream_no, seq)),
            Bound::Excluded(&seq) => Bound::Excluded(event_key(stream_no, seq)),
            Bound::Unbounded => Bound::Included(event_key(stream_no, unbounded)),
        };
        let keys = (key(seqs.start_bound(), 0), key(seqs.end_bound(), u64::MAX));
        self.events.range(keys).map(|guard| {
            let (key, value) = guard.into_inner()?;
            let seq = u64::from_be_bytes(key[4..12].try_into().expect("event keys are 12 bytes"));
            Ok((seq, StoredValue(value)))
        })
    }

    /// The signed checkpoint note of exactly `tree_size` of the stream.
    pub fn checkpoint_note(
        &self,
        stream_no: u32,
        tree_size: u64,
    ) -> Result<Option<StoredValue>, StoreError> {
        stored(
            self.chain
                .get(chain_key(CHAIN_CHECKPOINT, stream_no, tree_size)),
        )
    }

    /// The stream's newest checkpoint note, with its tree size.
    pub fn latest_checkpoint_note(
        &self,
        stream_no: u32,
    ) -> Result<Option<(u64, StoredValue)>, StoreError> {
        self.chain
            .range(
                chain_key(CHAIN_CHECKPOINT, stream_no, 0)
                    ..=chain_key(CHAIN_CHECKPOINT, stream_no, u64::MAX),
            )
            .next_back()
            .map(|guard| stored_pair(guard.into_inner()))
            .transpose()
            .map(|found| found.map(|(key, value)| (chain_key_number(&key).unwrap_or(0), value)))
    }

    /// The stored `BlockRecord` of block `block_index` of the stream.
    pub fn block_record(
        &self,
        stream_no: u32,
        block_index: u64,
    ) -> Result<Option<StoredValue>, StoreError> {
        stored(
            self.chain
                .get(chain_key(CHAIN_BLOCK, stream_no, block_index)),
        )
    }

    /// The stored block records `from..to` of the stream, in order, with their indexes.
    pub fn block_records(
        &self,
        stream_no: u32,
        from: u64,
        to: u64,
    ) -> impl Iterator<Item = Result<(u64, StoredValue), StoreError>> + 'static {
        self.chain
            .range(chain_key(CHAIN_BLOCK, stream_no, from)..chain_key(CHAIN_BLOCK, stream_no, to))
            .map(|guard| {
                let (key, value) = guard.into_inner()?;
                Ok((
                    chain_key_number(&key).unwrap_or(u64::MAX),
                    StoredValue(value),
                ))
            })
    }

    /// The roots of the perfect subtrees block `last_block` completes (32 bytes each),
    /// if the store keeps them for that block.
    pub fn subtree_roots(
        &self,
        stream_no: u32,
        last_block: u64,
    ) -> Result<Option<StoredValue>, StoreError> {
        stored(
            self.chain
                .get(chain_key(CHAIN_SUBTREES, stream_no, last_block)),
        )
    }

    /// The index of the sealed block holding `seq`, if it is sealed (`None` also when
    /// the stored index is not 8 bytes).
    pub fn block_of_seq(&self, stream_no: u32, seq: u64) -> Result<Option<u64>, StoreError> {
        let first = self
            .chain
            .range(
                chain_key(CHAIN_BLOCK_END, stream_no, seq)
                    ..=chain_key(CHAIN_BLOCK_END, stream_no, u64::MAX),
            )
            .next()
            .map(|guard| guard.into_inner())
            .transpose()?;
        Ok(first.and_then(|(_, value)| Some(u64::from_be_bytes(value.as_ref().try_into().ok()?))))
    }

    /// Whether the shard holds the tenant.
    pub fn has_tenant(&self, tenant_id: &str) -> Result<bool, StoreError> {
        Ok(self.tenants.contains_key(tenant_id.as_bytes())?)
    }

    /// `(tenant id, tenant state record)` of the tenants whose ids sort after `after`
    /// (every tenant when it is empty), in id order.
    pub fn tenant_records_after(
        &self,
        after: &str,
    ) -> impl Iterator<Item = Result<(StoredValue, StoredValue), StoreError>> + 'static {
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.as_bytes().to_vec())
        };
        self.tenants
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .map(|guard| stored_pair(guard.into_inner()))
    }

    /// `(tenant id, tenant state record)` of every tenant of the shard.
    pub fn tenant_records(
        &self,
    ) -> impl Iterator<Item = Result<(StoredValue, StoredValue), StoreError>> + 'static {
        self.tenants
            .iter()
            .map(|guard| stored_pair(guard.into_inner()))
    }

    /// The feed entries ([`super::FeedRuns`], encoded) with applied index in `indexes`,
    /// in order, with their indexes.
    pub fn feed_entries(
        &self,
        indexes: impl RangeBounds<u64>,
    ) -> impl Iterator<Item = anyhow::Result<(u64, StoredValue)>> + 'static {
        self.feed.range(feed_keys(indexes)).map(|guard| {
            let (key, value) = guard.into_inner()?;
            Ok((feed_index(&key)?, StoredValue(value)))
        })
    }

    /// The applied indexes of the feed entries in `indexes`, in order (the values are
    /// not read).
    pub fn feed_indexes(
        &self,
        indexes: impl RangeBounds<u64>,
    ) -> impl Iterator<Item = anyhow::Result<u64>> + 'static {
        self.feed
            .range(feed_keys(indexes))
            .map(|guard| feed_index(&guard.key()?))
    }

    /// Adds to `batch` the removal of feed entry `index` (the indexes cover it).
    pub fn remove_feed_entry(&self, batch: &mut WriteBatch, index: u64) {
        batch.0.remove(&self.feed, index.to_be_bytes());
    }

    /// Drops the whole time index of the shard (a rebuild).
    pub fn clear_time_index(&self) -> Result<(), StoreError> {
        Ok(self.tindex.clear()?)
    }

    /// The applied index of the last feed entry (0 when the feed is empty).
    pub fn last_feed_index(&self) -> anyhow::Result<u64> {
        match self.feed.last_key_value() {
            None => Ok(0),
            Some(guard) => {
                let (key, _) = guard.into_inner()?;
                feed_index(&key)
            }
        }
    }
}

/// A handle on the node's database (cheap to clone): [`WriteBatch`]es over any of its
/// keyspaces (one journal write each), and fsyncs of everything written.
#[derive(Clone)]
pub struct StoreDb(fjall::Database);

impl StoreDb {
    pub fn batch(&self) -> WriteBatch {
        WriteBatch(self.0.batch())
    }

    /// Makes everything written so far durable (journal fsync).
    pub fn sync_all(&self) -> Result<(), StoreError> {
        Ok(self.0.persist(fjall::PersistMode::SyncAll)?)
    }
}

impl super::NodeStore {
    /// A handle on this store's database.
    pub fn store_db(&self) -> StoreDb {
        StoreDb(self.db.clone())
    }
}

/// The node's own records (the `node` keyspace): its data format, a single node's
/// shard count, a cluster node's cluster id.
pub struct NodeMeta(pub(super) fjall::Keyspace);

const NODE_FORMAT: &[u8] = b"format";
const NODE_SHARD_COUNT: &[u8] = b"shard_count";
const NODE_CLUSTER_ID: &[u8] = b"cluster_id";

impl NodeMeta {
    /// The data format the directory was written in, if recorded.
    pub fn data_format(&self) -> anyhow::Result<Option<u32>> {
        self.u32_at(NODE_FORMAT)
    }

    pub fn set_data_format(&self, format: u32) -> Result<(), StoreError> {
        Ok(self.0.insert(NODE_FORMAT, format.to_be_bytes())?)
    }

    /// Whether a single node's shard count is recorded (read without decoding it).
    pub fn has_shard_count(&self) -> Result<bool, StoreError> {
        Ok(self.0.get(NODE_SHARD_COUNT)?.is_some())
    }

    /// A single node's shard count, if recorded.
    pub fn shard_count(&self) -> anyhow::Result<Option<u32>> {
        self.u32_at(NODE_SHARD_COUNT)
    }

    pub fn set_shard_count(&self, shards: u32) -> Result<(), StoreError> {
        Ok(self.0.insert(NODE_SHARD_COUNT, shards.to_be_bytes())?)
    }

    /// A cluster node's cluster id, if recorded (lossy UTF-8).
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .0
            .get(NODE_CLUSTER_ID)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    pub fn set_cluster_id(&self, cluster_id: &str) -> Result<(), StoreError> {
        Ok(self.0.insert(NODE_CLUSTER_ID, cluster_id.as_bytes())?)
    }

    fn u32_at(&self, key: &[u8]) -> anyhow::Result<Option<u32>> {
        match self.0.get(key)? {
            Some(bytes) => Ok(Some(u32::from_be_bytes(bytes.as_ref().try_into()?))),
            None => Ok(None),
        }
    }
}

/// Time-index reads and writes. Blocks are keyed by their last position, so key order
/// is position order within a stream.
impl ShardKeyspaces {
    /// The stream's time-index blocks whose last position is in `from..to` (`None`:
    /// to the stream's end), in position order; reversible.
    pub fn time_blocks(
        &self,
        stream_no: u32,
        from: (i64, u64),
        to: Option<(i64, u64)>,
    ) -> impl DoubleEndedIterator<Item = Result<TimeBlock, StoreError>> + 'static {
        let start = tindex_key(stream_no, from.0, from.1).to_vec();
        let end = match to {
            Some((occurred_at_ns, seq)) => tindex_key(stream_no, occurred_at_ns, seq).to_vec(),
            None => time_stream_end(stream_no),
        };
        self.tindex.range(start..end).map(move |guard| {
            let (key, value) = guard.into_inner()?;
            Ok((tindex_key_decode(&key, stream_no), StoredValue(value)))
        })
    }

    /// Adds to `batch` the write of a time-index block of the stream ending at `last`
    /// (replacing the block stored under that end, if any).
    pub fn insert_time_block(
        &self,
        batch: &mut WriteBatch,
        stream_no: u32,
        last: (i64, u64),
        value: Vec<u8>,
    ) {
        batch
            .0
            .insert(&self.tindex, tindex_key(stream_no, last.0, last.1), value);
    }
}

/// A key above every time-index key of the stream.
fn time_stream_end(stream_no: u32) -> Vec<u8> {
    let mut end = stream_no.to_be_bytes().to_vec();
    end.extend([0xFF; 17]);
    end
}

/// Feed keys are the applied log index, u64 BE.
fn feed_keys(indexes: impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let key = |bound: Bound<&u64>| match bound {
        Bound::Included(index) => Bound::Included(index.to_be_bytes()),
        Bound::Excluded(index) => Bound::Excluded(index.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (key(indexes.start_bound()), key(indexes.end_bound()))
}

fn feed_index(key: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_be_bytes(key.try_into()?))
}
