//! Deterministic apply: the ledger's state transition for a committed log entry.
//!
//! No clock, no randomness, no I/O: the storage layer answers lookups through
//! [`LedgerLookup`] and executes the [`LedgerWrite`]s this returns, in one atomic batch
//! together with the applied log id. Every replica that applies the same entries from
//! the same state produces the same writes, byte for byte.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::block::{block_hash, BlockHash, BlockHeader, BlockRecord, BLOCK_EVENTS_MAX};
use super::checkpoint::{CheckpointBody, NoteVerifier};
use super::event::{encode_canonical, leaf_hash, EventRecord, LeafHash};
use super::merkle::CompactTree;

/// What the leader proposes through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerCommand {
    /// A group-committed batch: `ingested_at_ns` is the leader's clock at proposal, so
    /// every replica stamps the same time.
    /// `block_events_max` travels with the entry, so every replica seals by size at the
    /// same event whatever its own configuration says.
    Append {
        ingested_at_ns: i64,
        block_events_max: u32,
        events: Vec<EventRecord>,
    },
    /// Seals the open blocks that opened at or before `opened_at_or_before_ns` (of one
    /// tenant, or of all), stamping them `sealed_at_ns`. The response lists the streams
    /// whose tree grew past their last checkpoint.
    Seal {
        sealed_at_ns: i64,
        opened_at_or_before_ns: i64,
        tenant_id: Option<String>,
    },
    /// Signed checkpoints the leader made from a `Seal` response. Apply records each one
    /// whose size and root match the stream's own tree, and skips the others.
    Checkpoint { notes: Vec<CheckpointNote> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointNote {
    pub tenant_id: String,
    /// A C2SP signed note (`docs/PROOFS.md`).
    pub note: String,
}

/// A stream whose tree has blocks no checkpoint covers yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDue {
    pub tenant_id: String,
    pub stream: String,
    pub tree_size: u64,
    pub root: [u8; 32],
    pub last_seq: u64,
    pub sealed_at_ns: i64,
}

/// What applying one entry returns to the proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerResponse {
    /// One receipt per event of an `Append`, in order.
    pub receipts: Vec<ApplyReceipt>,
    /// After a `Seal`: the streams to checkpoint.
    pub checkpoints_due: Vec<CheckpointDue>,
    /// After a `Seal`: blocks still open (too young to seal).
    pub open_blocks: u64,
    /// After a `Checkpoint`: how many notes were recorded and skipped.
    pub checkpoints_recorded: u32,
    pub checkpoints_skipped: u32,
    /// The entry did not pass apply's checks (`ledger::recheck`): nothing of it was
    /// applied, on any replica. Why, naming the item and field.
    #[serde(default)]
    pub refused: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReceipt {
    pub stream: String,
    pub seq: u64,
    pub leaf_hash: LeafHash,
    /// The event id had been recorded before; this is the original receipt.
    pub deduplicated: bool,
    /// With `deduplicated`: the event sent now differs from the one recorded under its
    /// id (not a retry but a reuse of the id); the receipt is the recorded event's,
    /// and the API refuses the event with ALREADY_EXISTS.
    #[serde(default)]
    pub conflict: bool,
    /// The recorded event's `ingested_at`: with the stream and seq, what a client
    /// needs to recompute the leaf hash of the event it sent.
    #[serde(default)]
    pub ingested_at_ns: i64,
}

/// A tenant's place in this shard. One stream per tenant for now; a whale's extra
/// streams (on other shards) come with the cluster work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantState {
    /// Dense per-shard number, the prefix of the tenant's dedup keys.
    pub tenant_no: u32,
    /// Dense per-shard number, the prefix of the stream's event keys.
    pub stream_no: u32,
    /// The seq the next event of the stream gets; seqs start at 1 and have no gaps.
    pub next_seq: u64,
    pub chain: StreamChain,
    /// `ingested_at` of the stream's last event. Apply stamps each event with the larger
    /// of the leader's clock and this, so `ingested_at` never goes backwards within a
    /// stream, across restarts and leader changes too (exports prove completeness of a
    /// time range by it).
    pub last_ingested_at_ns: i64,
}

/// [`TenantState`] as data format 2 stored it, before `last_ingested_at_ns`.
#[derive(Deserialize)]
struct TenantStateV2 {
    tenant_no: u32,
    stream_no: u32,
    next_seq: u64,
    chain: StreamChain,
}

/// A stream's tamper-evidence state: its open block and the tree over its sealed blocks.
/// Memory: two compact trees, at most 2 x 64 hashes (typically ~20).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamChain {
    /// Leaf hashes of the open block (its first seq is `next_seq - open.len()`).
    pub open: CompactTree,
    /// `ingested_at` of the open block's first event.
    pub open_since_ns: i64,
    /// The stream tree: one leaf per sealed block hash.
    pub blocks: CompactTree,
    /// Hash of the last sealed block (zeros before the first).
    pub last_block_hash: BlockHash,
    /// `sealed_at` of the last sealed block.
    pub last_sealed_at_ns: i64,
    /// Tree size of the latest recorded checkpoint.
    pub checkpointed_size: u64,
}

impl TenantState {
    fn new(number: u32) -> TenantState {
        TenantState {
            tenant_no: number,
            stream_no: number,
            next_seq: 1,
            chain: StreamChain::default(),
            last_ingested_at_ns: i64::MIN,
        }
    }

    /// The stored form (bincode).
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("tenant state serializes")
    }

    /// Reads the stored form, also as data format 2 wrote it (without
    /// `last_ingested_at_ns`: such a stream's events are then clamped from the first
    /// event applied after the upgrade on, which every replica does alike).
    pub fn decode(bytes: &[u8]) -> Option<TenantState> {
        use bincode::Options;
        let exact = || {
            bincode::DefaultOptions::new()
                .with_fixint_encoding()
                .reject_trailing_bytes()
        };
        if let Ok(state) = exact().deserialize::<TenantState>(bytes) {
            return Some(state);
        }
        let old: TenantStateV2 = exact().deserialize(bytes).ok()?;
        Some(TenantState {
            tenant_no: old.tenant_no,
            stream_no: old.stream_no,
            next_seq: old.next_seq,
            chain: old.chain,
            last_ingested_at_ns: i64::MIN,
        })
    }

    /// The last seq in a sealed block.
    pub fn last_sealed_seq(&self) -> u64 {
        self.next_seq - 1 - self.chain.open.len()
    }

    /// Panics unless the stream's state is one apply can produce: its events are seqs
    /// `1..next_seq` with no gap, the sealed blocks hold the first of them (each block
    /// 1 to [`BLOCK_EVENTS_MAX`] events) and the open block the rest, fewer than a
    /// full block; only the first block links to zeros; checkpoints cover sealed
    /// blocks only. O(1): checked for every tenant a storage batch writes, before the
    /// state is stored.
    fn assert_invariants(&self, tenant_id: &str) {
        let chain = &self.chain;
        let open = chain.open.len();
        let blocks = chain.blocks.len();
        assert!(
            self.next_seq >= 1,
            "seq continuity: tenant {tenant_id} has next seq {}, seqs start at 1",
            self.next_seq
        );
        assert!(
            open < self.next_seq && open < u64::from(BLOCK_EVENTS_MAX),
            "block bounds: tenant {tenant_id} has an open block of {open} events with next \
             seq {} (a block holds at most {BLOCK_EVENTS_MAX}, a full one is sealed at once)",
            self.next_seq
        );
        let sealed_events = self.last_sealed_seq();
        assert!(
            blocks <= sealed_events
                && sealed_events <= blocks.saturating_mul(u64::from(BLOCK_EVENTS_MAX)),
            "block bounds: tenant {tenant_id} has {sealed_events} sealed events in {blocks} \
             blocks (each holds 1 to {BLOCK_EVENTS_MAX})"
        );
        assert_eq!(
            blocks == 0,
            chain.last_block_hash == [0u8; 32],
            "chain link: tenant {tenant_id} has {blocks} sealed blocks and last block hash \
             {}; the first block, and only it, links to zeros",
            hex::encode(chain.last_block_hash)
        );
        assert!(
            chain.checkpointed_size <= blocks,
            "checkpoint bounds: tenant {tenant_id} has a checkpoint of tree size {} over {blocks} \
             sealed blocks",
            chain.checkpointed_size
        );
    }
}

/// Names a tenant's stream in receipts and reads: `"{tenant}/{index}"`.
pub fn stream_name(tenant_id: &str, stream_index: u32) -> String {
    use std::fmt::Write;
    // Once per applied event: sized once, no `format!` of the whole.
    let mut name = String::with_capacity(tenant_id.len() + 11);
    name.push_str(tenant_id);
    name.push('/');
    write!(name, "{stream_index}").expect("writing to a String cannot fail");
    name
}

/// Reads apply needs from committed state.
pub trait LedgerLookup {
    type Error;

    /// The position of an already recorded `(tenant, event_id)`.
    fn find_event_id(
        &self,
        tenant_no: u32,
        event_id: &str,
    ) -> Result<Option<(u32, u64)>, Self::Error>;

    /// The leaf hash and `ingested_at` of a recorded event (for the receipt of a
    /// duplicate, and to tell a retry from a reuse of its id).
    fn recorded_leaf(&self, stream_no: u32, seq: u64) -> Result<RecordedLeaf, Self::Error>;

    /// The root of a stream's tree just after block `block_index` was sealed.
    fn tree_root_after(
        &self,
        stream_no: u32,
        block_index: u64,
    ) -> Result<Option<[u8; 32]>, Self::Error>;

    /// The key checkpoint notes must be signed with; `None` skips the signature check
    /// (tests, the simulation).
    fn note_verifier(&self) -> Option<&NoteVerifier> {
        None
    }
}

/// What apply needs of a recorded event when its id comes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedLeaf {
    pub leaf_hash: LeafHash,
    pub ingested_at_ns: i64,
}

/// A write apply asks the storage layer to make, atomically with the applied log id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerWrite {
    Event {
        stream_no: u32,
        seq: u64,
        canonical: Vec<u8>,
    },
    Dedup {
        tenant_no: u32,
        event_id: String,
        stream_no: u32,
        seq: u64,
    },
    Tenant {
        tenant_id: String,
        state: TenantState,
    },
    Block {
        stream_no: u32,
        block_index: u64,
        /// The block's last seq: the key that finds a seq's block.
        last_seq: u64,
        record: BlockRecord,
        /// The roots of the stream tree's perfect subtrees this block completes, of
        /// 2, 4, 8, ... blocks (one per trailing one bit of `block_index`): kept so
        /// that a proof reads O(log n) nodes, not every block hash (`shard/proofs.rs`).
        subtree_roots: Vec<[u8; 32]>,
    },
    Checkpoint {
        stream_no: u32,
        tree_size: u64,
        tenant_id: String,
        stream_index: u32,
        note: String,
    },
}

/// The in-memory part of a shard's ledger state: its tenants and their streams.
///
/// Memory: one entry (~100 bytes) per tenant hosted by the shard; it does not grow with
/// the number of events.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    tenants: BTreeMap<String, TenantState>,
    events_total: u64,
    /// Events applied but not yet committed by the storage layer, so that a duplicate
    /// inside one storage batch is caught. Cleared by [`Ledger::batch_committed`].
    /// Only probed, never iterated: its order cannot reach the state.
    pending: HashMap<(u32, String), (u64, RecordedLeaf), foldhash::fast::RandomState>,
    /// Stream tree roots of blocks sealed in the not-yet-committed storage batch, so a
    /// checkpoint in the same batch finds them as a later batch would in the store.
    pending_roots: BTreeMap<(u32, u64), [u8; 32]>,
    /// Tenants whose state changed since the last storage batch: written once per batch,
    /// not once per event.
    dirty_tenants: std::collections::BTreeSet<String>,
}

impl Ledger {
    pub fn from_tenants(tenants: impl IntoIterator<Item = (String, TenantState)>) -> Ledger {
        let tenants: BTreeMap<String, TenantState> = tenants.into_iter().collect();
        let events_total = tenants.values().map(|state| state.next_seq - 1).sum();
        Ledger {
            tenants,
            events_total,
            ..Ledger::default()
        }
    }

    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantState> {
        self.tenants.get(tenant_id)
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    pub fn events_total(&self) -> u64 {
        self.events_total
    }

    /// Per stream, the seq its next event gets: `(stream_no, next_seq)`.
    pub fn frontier(&self) -> Vec<(u32, u64)> {
        self.tenants
            .values()
            .map(|state| (state.stream_no, state.next_seq))
            .collect()
    }

    /// Every tenant's state.
    pub fn tenants(&self) -> impl Iterator<Item = (&str, &TenantState)> + '_ {
        self.tenants
            .iter()
            .map(|(tenant_id, state)| (tenant_id.as_str(), state))
    }

    /// Events held in the not-yet-committed storage batch.
    pub fn pending_events(&self) -> usize {
        self.pending.len()
    }

    /// Closes a storage batch: appends the changed tenants' states to `writes`. The
    /// caller commits `writes` atomically, then calls [`Ledger::batch_committed`].
    pub fn seal_batch(&mut self, writes: &mut Vec<LedgerWrite>) {
        for tenant_id in std::mem::take(&mut self.dirty_tenants) {
            let state = self.tenants[&tenant_id].clone();
            state.assert_invariants(&tenant_id);
            writes.push(LedgerWrite::Tenant { tenant_id, state });
        }
    }

    /// The storage layer committed every write returned so far.
    pub fn batch_committed(&mut self) {
        self.pending.clear();
        self.pending_roots.clear();
    }

    /// Applies one command, appending the writes it needs to `writes`.
    pub fn apply<L>(
        &mut self,
        lookup: &L,
        command: &LedgerCommand,
        writes: &mut Vec<LedgerWrite>,
    ) -> Result<LedgerResponse, L::Error>
    where
        L: LedgerLookup,
    {
        // An entry that fails the checks applies nothing, on every replica alike.
        if let Err(reason) = super::recheck::check_command(command, lookup.note_verifier()) {
            return Ok(LedgerResponse {
                refused: Some(reason),
                ..LedgerResponse::default()
            });
        }
        match command {
            LedgerCommand::Append {
                ingested_at_ns,
                block_events_max,
                events,
            } => {
                let block_events_max = (*block_events_max).clamp(1, BLOCK_EVENTS_MAX);
                let mut receipts = Vec::with_capacity(events.len());
                writes.reserve(2 * events.len());
                for event in events {
                    receipts.push(self.append_one(
                        lookup,
                        *ingested_at_ns,
                        block_events_max,
                        event,
                        writes,
                    )?);
                }
                if cfg!(debug_assertions) {
                    self.assert_seqs_continue(&receipts);
                }
                Ok(LedgerResponse {
                    receipts,
                    ..LedgerResponse::default()
                })
            }
            LedgerCommand::Seal {
                sealed_at_ns,
                opened_at_or_before_ns,
                tenant_id,
            } => Ok(self.apply_seal(
                *sealed_at_ns,
                *opened_at_or_before_ns,
                tenant_id.as_deref(),
                writes,
            )),
            LedgerCommand::Checkpoint { notes } => self.apply_checkpoints(lookup, notes, writes),
        }
    }

    /// Seq continuity over one `Append`: per stream, the seqs of the events it recorded
    /// (duplicates aside) follow each other, the last one being the stream's last seq.
    /// Costs a map entry per stream and a probe per event, so it runs in debug builds
    /// (tests, the simulation); release builds check each tenant's state per storage
    /// batch (`TenantState::assert_invariants`).
    fn assert_seqs_continue(&self, receipts: &[ApplyReceipt]) {
        let mut last_seqs: HashMap<&str, u64> = HashMap::new();
        for receipt in receipts.iter().filter(|receipt| !receipt.deduplicated) {
            if let Some(previous) = last_seqs.insert(&receipt.stream, receipt.seq) {
                assert_eq!(
                    receipt.seq,
                    previous + 1,
                    "seq continuity: stream {} recorded seq {} after seq {previous}",
                    receipt.stream,
                    receipt.seq
                );
            }
        }
        for (stream, last_seq) in last_seqs {
            let tenant_id = stream
                .strip_suffix("/0")
                .expect("streams are named tenant/0");
            let next_seq = self.tenants[tenant_id].next_seq;
            assert_eq!(
                next_seq,
                last_seq + 1,
                "seq continuity: stream {stream} recorded seq {last_seq} last, its next seq is \
                 {next_seq}"
            );
        }
    }

    fn apply_seal(
        &mut self,
        sealed_at_ns: i64,
        opened_at_or_before_ns: i64,
        only_tenant: Option<&str>,
        writes: &mut Vec<LedgerWrite>,
    ) -> LedgerResponse {
        let mut response = LedgerResponse::default();
        // Every tenant, or just the one asked for (none if it has no events here).
        let tenants = self
            .tenants
            .iter_mut()
            .filter(|(tenant_id, _)| only_tenant.is_none_or(|only| only == tenant_id.as_str()));
        for (tenant_id, state) in tenants {
            let chain = &state.chain;
            if !chain.open.is_empty() {
                if chain.open_since_ns <= opened_at_or_before_ns {
                    seal_block(
                        tenant_id,
                        state,
                        sealed_at_ns,
                        &mut self.pending_roots,
                        writes,
                    );
                    mark_dirty(&mut self.dirty_tenants, tenant_id);
                } else {
                    response.open_blocks += 1;
                }
            }
            let chain = &state.chain;
            if chain.blocks.len() > chain.checkpointed_size {
                response.checkpoints_due.push(CheckpointDue {
                    stream: stream_name(tenant_id, 0),
                    tree_size: chain.blocks.len(),
                    root: chain.blocks.root(),
                    last_seq: state.last_sealed_seq(),
                    sealed_at_ns: chain.last_sealed_at_ns,
                    tenant_id: tenant_id.clone(),
                });
            }
        }
        response
    }

    fn apply_checkpoints<L>(
        &mut self,
        lookup: &L,
        notes: &[CheckpointNote],
        writes: &mut Vec<LedgerWrite>,
    ) -> Result<LedgerResponse, L::Error>
    where
        L: LedgerLookup,
    {
        let mut response = LedgerResponse::default();
        for CheckpointNote { tenant_id, note } in notes {
            let Some(state) = self.tenants.get_mut(tenant_id) else {
                response.checkpoints_skipped += 1;
                continue;
            };
            let stream = stream_name(tenant_id, 0);
            let matches = match CheckpointBody::parse_note(note) {
                Ok(body) => {
                    let chain = &state.chain;
                    let size_ok = body.tree_size > chain.checkpointed_size
                        && body.tree_size <= chain.blocks.len()
                        && body.origin.ends_with(&format!("/{stream}"));
                    let root = if !size_ok {
                        None
                    } else if body.tree_size == chain.blocks.len() {
                        Some(chain.blocks.root())
                    } else {
                        let key = (state.stream_no, body.tree_size - 1);
                        match self.pending_roots.get(&key) {
                            Some(root) => Some(*root),
                            None => lookup.tree_root_after(key.0, key.1)?,
                        }
                    };
                    (root == Some(body.root)).then_some(body.tree_size)
                }
                Err(_) => None,
            };
            let Some(tree_size) = matches else {
                response.checkpoints_skipped += 1;
                continue;
            };
            assert!(
                state.chain.checkpointed_size < tree_size && tree_size <= state.chain.blocks.len(),
                "checkpoint bounds: stream {stream} records a checkpoint of tree size {tree_size} \
                 after one of {} over {} sealed blocks",
                state.chain.checkpointed_size,
                state.chain.blocks.len()
            );
            state.chain.checkpointed_size = tree_size;
            writes.push(LedgerWrite::Checkpoint {
                stream_no: state.stream_no,
                tree_size,
                tenant_id: tenant_id.clone(),
                stream_index: 0,
                note: note.clone(),
            });
            mark_dirty(&mut self.dirty_tenants, tenant_id);
            response.checkpoints_recorded += 1;
        }
        Ok(response)
    }

    fn append_one<L>(
        &mut self,
        lookup: &L,
        ingested_at_ns: i64,
        block_events_max: u32,
        event: &EventRecord,
        writes: &mut Vec<LedgerWrite>,
    ) -> Result<ApplyReceipt, L::Error>
    where
        L: LedgerLookup,
    {
        let stream = stream_name(&event.tenant_id, 0);
        if !self.tenants.contains_key(&event.tenant_id) {
            let number = u32::try_from(self.tenants.len() + 1)
                .expect("a shard hosts fewer than 2^32 tenants");
            self.tenants
                .insert(event.tenant_id.clone(), TenantState::new(number));
        }
        // Update in place: no copy of the tenant id per event on this hot path.
        let state = self
            .tenants
            .get_mut(&event.tenant_id)
            .expect("inserted above when new");

        let dedup_key = (state.tenant_no, event.event_id.clone());
        if let Some(&(seq, recorded)) = self.pending.get(&dedup_key) {
            return Ok(duplicate_receipt(stream, seq, recorded, event));
        }
        if let Some((stream_no, seq)) = lookup.find_event_id(state.tenant_no, &event.event_id)? {
            let recorded = lookup.recorded_leaf(stream_no, seq)?;
            return Ok(duplicate_receipt(stream, seq, recorded, event));
        }

        // Seq continuity: the stream holds seqs 1..next_seq, so the event gets the last
        // seq + 1, and the open block (the seqs just before it) has room for it. Per
        // event: debug builds only; `TenantState::assert_invariants` checks the same per
        // storage batch in release builds.
        let seq = state.next_seq;
        debug_assert!(
            seq >= 1 && state.chain.open.len() < seq,
            "seq continuity: stream {stream} gives seq {seq} after an open block of {} events",
            state.chain.open.len()
        );
        debug_assert!(
            state.chain.open.len() < u64::from(BLOCK_EVENTS_MAX),
            "block bounds: stream {stream} has a full open block of {} events",
            state.chain.open.len()
        );
        let ingested_at_ns = ingested_at_ns.max(state.last_ingested_at_ns);
        state.last_ingested_at_ns = ingested_at_ns;
        let mut canonical = Vec::with_capacity(event.size_bytes() + stream.len());
        encode_canonical(&stream, seq, ingested_at_ns, event, &mut canonical);
        let hash = leaf_hash(&canonical);

        state.next_seq = seq + 1;
        if state.chain.open.is_empty() {
            state.chain.open_since_ns = ingested_at_ns;
        }
        state.chain.open.push(hash);
        let stream_no = state.stream_no;
        let tenant_no = state.tenant_no;
        writes.push(LedgerWrite::Event {
            stream_no,
            seq,
            canonical,
        });
        if state.chain.open.len() >= u64::from(block_events_max) {
            seal_block(
                &event.tenant_id,
                state,
                ingested_at_ns,
                &mut self.pending_roots,
                writes,
            );
        }
        self.events_total += 1;
        self.pending.insert(
            dedup_key,
            (
                seq,
                RecordedLeaf {
                    leaf_hash: hash,
                    ingested_at_ns,
                },
            ),
        );
        writes.push(LedgerWrite::Dedup {
            tenant_no,
            event_id: event.event_id.clone(),
            stream_no,
            seq,
        });
        mark_dirty(&mut self.dirty_tenants, &event.tenant_id);
        Ok(ApplyReceipt {
            stream,
            seq,
            leaf_hash: hash,
            deduplicated: false,
            conflict: false,
            ingested_at_ns,
        })
    }
}

/// The receipt of an event whose id was recorded before (at `seq`): the recorded
/// event's. Whether `event` is the same event (a retry) or another one under the same
/// id is decided by its leaf hash at the recorded position and time: the canonical
/// bytes cover every field, so equal hashes mean equal events. The comparison costs
/// one encoding and one SHA-256 per duplicate (~1 us), and needs no digest stored
/// beside each id.
fn duplicate_receipt(
    stream: String,
    seq: u64,
    recorded: RecordedLeaf,
    event: &EventRecord,
) -> ApplyReceipt {
    let mut canonical = Vec::with_capacity(event.size_bytes() + stream.len());
    encode_canonical(&stream, seq, recorded.ingested_at_ns, event, &mut canonical);
    let conflict = leaf_hash(&canonical) != recorded.leaf_hash;
    ApplyReceipt {
        stream,
        seq,
        leaf_hash: recorded.leaf_hash,
        deduplicated: true,
        conflict,
        ingested_at_ns: recorded.ingested_at_ns,
    }
}

fn mark_dirty(dirty: &mut std::collections::BTreeSet<String>, tenant_id: &str) {
    if !dirty.contains(tenant_id) {
        dirty.insert(tenant_id.to_string());
    }
}

/// Seals a stream's open block (which must hold at least one event): writes the block
/// and moves the chain on.
fn seal_block(
    tenant_id: &str,
    state: &mut TenantState,
    sealed_at_ns: i64,
    pending_roots: &mut BTreeMap<(u32, u64), [u8; 32]>,
    writes: &mut Vec<LedgerWrite>,
) {
    let chain = &mut state.chain;
    let count = chain.open.len();
    assert!(
        count > 0,
        "block bounds: tenant {tenant_id} seals an empty block {}",
        chain.blocks.len()
    );
    assert!(
        count <= u64::from(BLOCK_EVENTS_MAX),
        "block bounds: tenant {tenant_id} seals block {} of {count} events, more than \
         {BLOCK_EVENTS_MAX}",
        chain.blocks.len()
    );
    assert!(
        state.next_seq > count,
        "seq continuity: tenant {tenant_id} seals block {} of {count} events before next seq \
         {} (its first seq would be below 1)",
        chain.blocks.len(),
        state.next_seq
    );
    // The chain link: the first block follows nothing (zeros), every other one the
    // hash of a sealed block (never zeros).
    assert_eq!(
        chain.blocks.is_empty(),
        chain.last_block_hash == [0u8; 32],
        "chain link: tenant {tenant_id} seals block {} after block hash {}; the first \
         block, and only it, links to zeros",
        chain.blocks.len(),
        hex::encode(chain.last_block_hash)
    );
    let header = BlockHeader {
        stream: stream_name(tenant_id, 0),
        block_index: chain.blocks.len(),
        prev_block_hash: chain.last_block_hash,
        merkle_root: chain.open.root(),
        first_seq: state.next_seq - count,
        count: u32::try_from(count).expect("a block holds at most BLOCK_EVENTS_MAX events"),
        sealed_at_ns,
    };
    let header_bytes = header.encode();
    let hash = block_hash(&header_bytes);
    let mut subtree_roots = Vec::new();
    chain.blocks.push_completing(hash, &mut subtree_roots);
    assert_eq!(
        chain.blocks.len(),
        header.block_index + 1,
        "block bounds: tenant {tenant_id}'s stream tree has {} leaves after block {}, one \
         per sealed block",
        chain.blocks.len(),
        header.block_index
    );
    chain.last_block_hash = hash;
    chain.last_sealed_at_ns = sealed_at_ns;
    chain.open = CompactTree::new();
    pending_roots.insert((state.stream_no, header.block_index), chain.blocks.root());
    writes.push(LedgerWrite::Block {
        stream_no: state.stream_no,
        block_index: header.block_index,
        last_seq: header.last_seq(),
        record: BlockRecord {
            header: header_bytes,
            block_hash: hash,
            tree_root_after: chain.blocks.root(),
        },
        subtree_roots,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::sample_event;
    use crate::ledger::memory::{MemoryStore, Replaced};

    /// The committed store, executing writes like the fjall store does.
    #[derive(Default)]
    struct ModelStore(MemoryStore);

    impl ModelStore {
        fn commit(&mut self, writes: Vec<LedgerWrite>) {
            for write in writes {
                let replaced = self.0.execute(write);
                assert!(
                    !matches!(replaced, Replaced::Event(_, Some(_))),
                    "an event is never overwritten"
                );
            }
        }
    }

    fn append(events: Vec<EventRecord>) -> LedgerCommand {
        LedgerCommand::Append {
            ingested_at_ns: 7,
            block_events_max: 3,
            events,
        }
    }

    #[test]
    fn seqs_are_gap_free_per_tenant_and_duplicates_return_the_original() {
        let mut ledger = Ledger::default();
        let mut store = ModelStore::default();
        let mut writes = Vec::new();
        let command = append(vec![
            sample_event("a", "e1"),
            sample_event("b", "e1"),
            sample_event("a", "e2"),
            sample_event("a", "e1"),
        ]);
        let response = ledger.apply(&store.0, &command, &mut writes).unwrap();
        let seqs: Vec<(u64, bool)> = response
            .receipts
            .iter()
            .map(|r| (r.seq, r.deduplicated))
            .collect();
        assert_eq!(seqs, vec![(1, false), (1, false), (2, false), (1, true)]);
        assert_eq!(
            response.receipts[3].leaf_hash,
            response.receipts[0].leaf_hash
        );
        store.commit(std::mem::take(&mut writes));
        ledger.batch_committed();

        let again = ledger
            .apply(
                &store.0,
                &append(vec![sample_event("a", "e2"), sample_event("a", "e3")]),
                &mut writes,
            )
            .unwrap();
        assert_eq!(again.receipts[0].seq, 2);
        assert!(again.receipts[0].deduplicated);
        assert_eq!(again.receipts[1].seq, 3);
        assert!(!again.receipts[1].deduplicated);
        assert_eq!(ledger.events_total(), 4);
    }

    /// An id sent again with another body is not a retry: the receipt is the
    /// recorded event's and says `conflict`, in the batch that recorded it (pending)
    /// as in a later one (the store), and the ingested_at of a later apply does not
    /// make a true retry look different.
    #[test]
    fn an_id_sent_again_with_another_body_is_a_conflict_not_a_retry() {
        let mut ledger = Ledger::default();
        let mut store = ModelStore::default();
        let mut writes = Vec::new();
        let mut other = sample_event("a", "e1");
        other.action = "doc.delete".into();
        let first = ledger
            .apply(
                &store.0,
                &append(vec![
                    sample_event("a", "e1"),
                    other.clone(),
                    sample_event("a", "e1"),
                ]),
                &mut writes,
            )
            .unwrap();
        let outcomes: Vec<(u64, bool, bool)> = first
            .receipts
            .iter()
            .map(|r| (r.seq, r.deduplicated, r.conflict))
            .collect();
        assert_eq!(
            outcomes,
            vec![(1, false, false), (1, true, true), (1, true, false)]
        );
        assert_eq!(first.receipts[1].leaf_hash, first.receipts[0].leaf_hash);
        assert_eq!(first.receipts[1].ingested_at_ns, 7);
        store.commit(std::mem::take(&mut writes));
        ledger.batch_committed();

        let later = LedgerCommand::Append {
            ingested_at_ns: 99,
            block_events_max: 3,
            events: vec![other, sample_event("a", "e1")],
        };
        let again = ledger.apply(&store.0, &later, &mut writes).unwrap();
        let outcomes: Vec<(u64, bool, bool, i64)> = again
            .receipts
            .iter()
            .map(|r| (r.seq, r.deduplicated, r.conflict, r.ingested_at_ns))
            .collect();
        assert_eq!(outcomes, vec![(1, true, true, 7), (1, true, false, 7)]);
        assert!(writes.is_empty(), "nothing recorded");
        assert_eq!(ledger.events_total(), 1);
    }

    #[test]
    fn two_replicas_produce_identical_writes() {
        let commands = vec![
            append(vec![sample_event("a", "1"), sample_event("b", "2")]),
            append(vec![sample_event("b", "2"), sample_event("c", "3")]),
        ];
        let run = || {
            let mut ledger = Ledger::default();
            let mut store = ModelStore::default();
            let mut all = Vec::new();
            for command in &commands {
                let mut writes = Vec::new();
                ledger.apply(&store.0, command, &mut writes).unwrap();
                ledger.seal_batch(&mut writes);
                all.extend(writes.clone());
                store.commit(writes);
                ledger.batch_committed();
            }
            all
        };
        assert_eq!(run(), run());
    }
}
