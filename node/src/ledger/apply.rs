//! Deterministic apply: the ledger's state transition for a committed log entry.
//!
//! No clock, no randomness, no I/O: the storage layer answers lookups through
//! [`LedgerLookup`] and executes the [`LedgerWrite`]s this returns, in one atomic batch
//! together with the applied log id. Every replica that applies the same entries from
//! the same state produces the same writes, byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{encode_canonical, leaf_hash, EventRecord, LeafHash};

/// What the leader proposes through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerCommand {
    /// A group-committed batch: `ingested_at_ns` is the leader's clock at proposal, so
    /// every replica stamps the same time.
    Append {
        ingested_at_ns: i64,
        events: Vec<EventRecord>,
    },
}

/// What applying one entry returns to the proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerResponse {
    /// One receipt per event of an `Append`, in order.
    pub receipts: Vec<ApplyReceipt>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReceipt {
    pub stream: String,
    pub seq: u64,
    pub leaf_hash: LeafHash,
    /// The event id had been recorded before; this is the original receipt.
    pub deduplicated: bool,
}

/// A tenant's place in this shard. One stream per tenant for now; a whale's extra
/// streams (on other shards) come with the cluster work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantState {
    /// Dense per-shard number, the prefix of the tenant's dedup keys.
    pub tenant_no: u32,
    /// Dense per-shard number, the prefix of the stream's event keys.
    pub stream_no: u32,
    /// The seq the next event of the stream gets; seqs start at 1 and have no gaps.
    pub next_seq: u64,
}

/// Names a tenant's stream in receipts and reads: `"{tenant}/{index}"`.
pub fn stream_name(tenant_id: &str, stream_index: u32) -> String {
    format!("{tenant_id}/{stream_index}")
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

    /// The leaf hash of a recorded event (for the receipt of a duplicate).
    fn leaf_hash_of(&self, stream_no: u32, seq: u64) -> Result<LeafHash, Self::Error>;
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
    pending: BTreeMap<(u32, String), (u32, u64, LeafHash)>,
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

    /// Events held in the not-yet-committed storage batch.
    pub fn pending_events(&self) -> usize {
        self.pending.len()
    }

    /// Closes a storage batch: appends the changed tenants' states to `writes`. The
    /// caller commits `writes` atomically, then calls [`Ledger::batch_committed`].
    pub fn seal_batch(&mut self, writes: &mut Vec<LedgerWrite>) {
        for tenant_id in std::mem::take(&mut self.dirty_tenants) {
            let state = self.tenants[&tenant_id];
            writes.push(LedgerWrite::Tenant { tenant_id, state });
        }
    }

    /// The storage layer committed every write returned so far.
    pub fn batch_committed(&mut self) {
        self.pending.clear();
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
        match command {
            LedgerCommand::Append {
                ingested_at_ns,
                events,
            } => {
                let mut receipts = Vec::with_capacity(events.len());
                writes.reserve(2 * events.len());
                for event in events {
                    receipts.push(self.append_one(lookup, *ingested_at_ns, event, writes)?);
                }
                Ok(LedgerResponse { receipts })
            }
        }
    }

    fn append_one<L>(
        &mut self,
        lookup: &L,
        ingested_at_ns: i64,
        event: &EventRecord,
        writes: &mut Vec<LedgerWrite>,
    ) -> Result<ApplyReceipt, L::Error>
    where
        L: LedgerLookup,
    {
        let stream = stream_name(&event.tenant_id, 0);
        let tenant = match self.tenants.get(&event.tenant_id) {
            Some(state) => *state,
            None => {
                let number = u32::try_from(self.tenants.len() + 1)
                    .expect("a shard hosts fewer than 2^32 tenants");
                let state = TenantState {
                    tenant_no: number,
                    stream_no: number,
                    next_seq: 1,
                };
                self.tenants.insert(event.tenant_id.clone(), state);
                state
            }
        };

        let dedup_key = (tenant.tenant_no, event.event_id.clone());
        if let Some((_, seq, hash)) = self.pending.get(&dedup_key) {
            return Ok(ApplyReceipt {
                stream,
                seq: *seq,
                leaf_hash: *hash,
                deduplicated: true,
            });
        }
        if let Some((stream_no, seq)) = lookup.find_event_id(tenant.tenant_no, &event.event_id)? {
            let hash = lookup.leaf_hash_of(stream_no, seq)?;
            return Ok(ApplyReceipt {
                stream,
                seq,
                leaf_hash: hash,
                deduplicated: true,
            });
        }

        let seq = tenant.next_seq;
        let mut canonical = Vec::with_capacity(event.size_bytes() + stream.len());
        encode_canonical(&stream, seq, ingested_at_ns, event, &mut canonical);
        let hash = leaf_hash(&canonical);

        // Update in place: no copy of the tenant id per event on this hot path.
        self.tenants
            .get_mut(&event.tenant_id)
            .expect("inserted above when new")
            .next_seq = seq + 1;
        self.events_total += 1;
        self.pending
            .insert(dedup_key, (tenant.stream_no, seq, hash));

        writes.push(LedgerWrite::Event {
            stream_no: tenant.stream_no,
            seq,
            canonical,
        });
        writes.push(LedgerWrite::Dedup {
            tenant_no: tenant.tenant_no,
            event_id: event.event_id.clone(),
            stream_no: tenant.stream_no,
            seq,
        });
        if !self.dirty_tenants.contains(&event.tenant_id) {
            self.dirty_tenants.insert(event.tenant_id.clone());
        }
        Ok(ApplyReceipt {
            stream,
            seq,
            leaf_hash: hash,
            deduplicated: false,
        })
    }
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
