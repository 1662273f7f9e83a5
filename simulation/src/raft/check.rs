//! The trace and the checkers.
//!
//! Checkers run continuously: the state machines report every log entry they apply
//! and every write they make, the clients report every acknowledgement and read, and a
//! sampler reports every replica's `RaftMetrics` each step. The first violation is
//! kept and ends the run; the final checks run once the cluster has converged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::ServerState;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use trail_node::ledger::merkle::{root_of, CompactTree};
use trail_node::ledger::{
    leaf_hash, BlockHeader, BlockRecord, CheckpointBody, LeafHash, LedgerWrite, MemoryStore,
    StoredEvent,
};

use super::{LogId, Metrics};

/// A running hash of everything that happened, to compare runs of one seed.
pub struct Trace {
    clock: TraceClock,
    hasher: Sha256,
    count: u64,
    /// Every line, when the run was asked to keep them (`--trace`).
    lines: Option<Vec<String>>,
}

/// Where a trace line's virtual time comes from.
enum TraceClock {
    /// The run's one paused tokio runtime (the Raft harness).
    Tokio(Instant),
    /// A virtual time the run's driver sets (the turmoil harness: every simulated host
    /// has a runtime and a clock of its own; the driver sets the simulation's elapsed
    /// time before each step).
    Shared(Arc<AtomicU64>),
}

impl Trace {
    pub fn new(keep_lines: bool) -> Trace {
        Trace::with_clock(keep_lines, TraceClock::Tokio(Instant::now()))
    }

    /// A trace whose lines are stamped with `now_us`, which the caller keeps current.
    pub fn with_shared_clock(keep_lines: bool, now_us: Arc<AtomicU64>) -> Trace {
        Trace::with_clock(keep_lines, TraceClock::Shared(now_us))
    }

    fn with_clock(keep_lines: bool, clock: TraceClock) -> Trace {
        Trace {
            clock,
            hasher: Sha256::new(),
            count: 0,
            lines: keep_lines.then(Vec::new),
        }
    }

    /// Virtual microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        match &self.clock {
            TraceClock::Tokio(start) => {
                u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
            }
            TraceClock::Shared(now_us) => now_us.load(Ordering::SeqCst),
        }
    }

    pub fn record(&mut self, line: &str) {
        let line = format!("{:>10} {line}", self.now_us());
        self.count += 1;
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        if let Some(lines) = self.lines.as_mut() {
            lines.push(line);
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn hash(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }

    pub fn take_lines(&mut self) -> Vec<String> {
        self.lines.take().unwrap_or_default()
    }
}

/// What the checkers know, shared by every part of the run.
#[derive(Clone)]
pub struct Checker {
    inner: Arc<Mutex<CheckState>>,
    pub trace: Arc<Mutex<Trace>>,
}

/// The first application of a log entry: digests of the entry and of its effects.
#[derive(Clone, Copy)]
struct Applied {
    log_id: LogId,
    entry: [u8; 32],
    effects: [u8; 32],
    node: u64,
}

#[derive(Default)]
struct CheckState {
    violation: Option<String>,
    /// Log index -> the entry applied there, first.
    applied: BTreeMap<u64, Applied>,
    /// `(stream_no, seq)` -> canonical event, as the first replica wrote it.
    events: BTreeMap<(u32, u64), Vec<u8>>,
    blocks: BTreeMap<(u32, u64), BlockRecord>,
    checkpoints: BTreeMap<(u32, u64), String>,
    /// The client oracle: every acknowledged receipt.
    acked: BTreeMap<(String, String), (u64, LeafHash)>,
    acked_at: BTreeMap<(String, u64), String>,
    /// Per tenant, the highest seq acknowledged so far.
    acked_max_seq: BTreeMap<String, u64>,
    /// Every `(tenant, event id)` a client sent, acknowledged or not.
    sent: BTreeSet<(String, String)>,
    /// Leader ids (term, node) seen leading, and the highest index applied by any
    /// replica while its vote was `(term, node)`.
    leaders: BTreeSet<(u64, u64)>,
    applied_under: BTreeMap<(u64, u64), u64>,
    /// Per replica: the highest vote it reported (votes are durable: never go back).
    votes: BTreeMap<u64, (u64, u64, bool)>,
    /// Per replica incarnation: the highest applied index it reported.
    applied_index: BTreeMap<(u64, u64), u64>,
    reads_checked: u64,
}

pub type CheckResult = Result<(), String>;

impl Checker {
    pub fn new(keep_trace: bool) -> Checker {
        Checker::with_trace(Arc::new(Mutex::new(Trace::new(keep_trace))))
    }

    /// A checker of its own (one per Raft group) writing into a shared trace.
    pub fn with_trace(trace: Arc<Mutex<Trace>>) -> Checker {
        Checker {
            inner: Arc::new(Mutex::new(CheckState::default())),
            trace,
        }
    }

    fn state(&self) -> MutexGuard<'_, CheckState> {
        self.inner.lock().expect("checker lock")
    }

    pub fn record(&self, line: &str) {
        self.trace.lock().expect("trace lock").record(line);
    }

    /// Keeps the first violation; the run stops at the next step.
    pub fn fail(&self, message: String) {
        let first = {
            let mut state = self.state();
            let first = state.violation.is_none();
            if first {
                state.violation = Some(message.clone());
            }
            first
        };
        if first {
            self.record(&format!("VIOLATION {message}"));
        }
    }

    pub fn check(&self, result: CheckResult) {
        if let Err(message) = result {
            self.fail(message);
        }
    }

    pub fn violation(&self) -> Option<String> {
        self.state().violation.clone()
    }

    pub fn reads_checked(&self) -> u64 {
        self.state().reads_checked
    }

    /// State machine safety, at the level of apply: log index `index` holds the same
    /// entry on every replica (same log id, same command: log matching), and applying
    /// it makes the same writes and gives the same response everywhere, every time (a
    /// replica may apply it again after a crash took back its effects, never on top of
    /// them).
    pub fn on_apply(
        &self,
        node: u64,
        log_id: LogId,
        entry: [u8; 32],
        effects: [u8; 32],
    ) -> CheckResult {
        let mut state = self.state();
        let Some(first) = state.applied.get(&log_id.index).copied() else {
            state.applied.insert(
                log_id.index,
                Applied {
                    log_id,
                    entry,
                    effects,
                    node,
                },
            );
            return Ok(());
        };
        let first_node = first.node;
        if first.log_id != log_id {
            Err(format!(
                "state machine safety: replica {node} applied {log_id} at index {}, replica \
                 {first_node} applied {}",
                log_id.index, first.log_id
            ))
        } else if first.entry != entry {
            Err(format!(
                "log matching: replica {node} applied an entry {log_id} that differs from \
                 the entry {log_id} replica {first_node} applied (one log id, two commands)"
            ))
        } else if first.effects != effects {
            Err(format!(
                "apply is not a function of the log: entry {log_id} made different writes \
                 or gave a different response on replica {node} than on replica \
                 {first_node} (applied twice, or apply diverged)"
            ))
        } else {
            Ok(())
        }
    }

    /// A write the state machine of `node` is about to execute on `store`.
    pub fn on_write(&self, node: u64, write: &LedgerWrite, store: &MemoryStore) -> CheckResult {
        let mut state = self.state();
        match write {
            LedgerWrite::Event {
                stream_no,
                seq,
                canonical,
            } => {
                let key = (*stream_no, *seq);
                if *seq != 1 && !store.events.contains_key(&(*stream_no, seq - 1)) {
                    return Err(format!(
                        "gap: replica {node} writes stream {stream_no} seq {seq} without seq {}",
                        seq - 1
                    ));
                }
                if store.events.contains_key(&key) {
                    return Err(format!(
                        "duplicate: replica {node} writes stream {stream_no} seq {seq} twice"
                    ));
                }
                match state.events.get(&key) {
                    Some(first) if first != canonical => {
                        return Err(format!(
                            "replicas disagree on stream {stream_no} seq {seq} (replica {node})"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        state.events.insert(key, canonical.clone());
                    }
                }
                let stored = StoredEvent::decode_canonical(canonical)
                    .map_err(|error| format!("replica {node}: event does not decode: {error}"))?;
                let tenant = stored.event.tenant_id;
                let id = stored.event.event_id;
                if stored.seq != *seq {
                    return Err(format!(
                        "replica {node}: event stored at seq {seq} says seq {}",
                        stored.seq
                    ));
                }
                if let Some((acked_seq, acked_hash)) =
                    state.acked.get(&(tenant.clone(), id.clone()))
                {
                    if (*acked_seq, *acked_hash) != (*seq, leaf_hash(canonical)) {
                        return Err(format!(
                            "acknowledged event {tenant}/{id} (seq {acked_seq}) written again \
                             at seq {seq} on replica {node}: lost or duplicated"
                        ));
                    }
                }
                if let Some(acked_id) = state.acked_at.get(&(tenant.clone(), *seq)) {
                    if *acked_id != id {
                        return Err(format!(
                            "acknowledged event {tenant}/{acked_id} lost: replica {node} \
                             writes {id} at its seq {seq}"
                        ));
                    }
                }
            }
            LedgerWrite::Dedup {
                tenant_no,
                event_id,
                ..
            } => {
                if store
                    .dedup
                    .contains_key(&(*tenant_no, event_id.to_string()))
                {
                    return Err(format!(
                        "duplicate: replica {node} records event id {event_id} twice"
                    ));
                }
            }
            LedgerWrite::Tenant { .. } => {}
            LedgerWrite::Block {
                stream_no,
                block_index,
                record,
                ..
            } => {
                let key = (*stream_no, *block_index);
                if store.blocks.contains_key(&key) {
                    return Err(format!(
                        "replica {node} seals block {block_index} of stream {stream_no} twice"
                    ));
                }
                match state.blocks.get(&key) {
                    Some(first) if first != record => {
                        return Err(format!(
                            "replicas sealed different blocks: stream {stream_no} block \
                             {block_index} on replica {node}"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        state.blocks.insert(key, record.clone());
                    }
                }
            }
            LedgerWrite::Checkpoint {
                stream_no,
                tree_size,
                note,
                ..
            } => {
                let key = (*stream_no, *tree_size);
                if store.checkpoints.contains_key(&key) {
                    return Err(format!("replica {node} records checkpoint {key:?} twice"));
                }
                match state.checkpoints.get(&key) {
                    Some(first) if first != note => {
                        return Err(format!(
                            "replicas recorded different checkpoints {key:?} (replica {node})"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        state.checkpoints.insert(key, note.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// A snapshot a replica installs holds what the replicas wrote.
    pub fn on_install(&self, node: u64, store: &MemoryStore) -> CheckResult {
        let state = self.state();
        for (key, canonical) in &store.events {
            if let Some(first) = state.events.get(key) {
                if first != canonical {
                    return Err(format!(
                        "replica {node} installed a snapshot that disagrees on event {key:?}"
                    ));
                }
            }
        }
        for (key, record) in &store.blocks {
            if let Some(first) = state.blocks.get(key) {
                if first != record {
                    return Err(format!(
                        "replica {node} installed a snapshot that disagrees on block {key:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn on_sent(&self, tenant: &str, event_id: &str) {
        self.state()
            .sent
            .insert((tenant.to_string(), event_id.to_string()));
    }

    /// A client got receipts: a retried event must get its original receipt.
    pub fn on_ack(&self, tenant: &str, event_id: &str, seq: u64, hash: LeafHash) -> CheckResult {
        let mut state = self.state();
        let key = (tenant.to_string(), event_id.to_string());
        if let Some(first) = state.acked.get(&key) {
            if *first != (seq, hash) {
                return Err(format!(
                    "event {tenant}/{event_id} acknowledged twice with different receipts \
                     (seq {} then {seq})",
                    first.0
                ));
            }
            return Ok(());
        }
        if let Some(other) = state.acked_at.get(&(tenant.to_string(), seq)) {
            return Err(format!(
                "events {tenant}/{other} and {tenant}/{event_id} both acknowledged at seq {seq}"
            ));
        }
        // The event may already be written somewhere: it must be this one.
        state.acked.insert(key, (seq, hash));
        state
            .acked_at
            .insert((tenant.to_string(), seq), event_id.to_string());
        let max = state.acked_max_seq.entry(tenant.to_string()).or_insert(0);
        *max = (*max).max(seq);
        Ok(())
    }

    pub fn acked_max_seq(&self, tenant: &str) -> u64 {
        self.state().acked_max_seq.get(tenant).copied().unwrap_or(0)
    }

    /// A read claimed to be linearizable must see every write acknowledged before the
    /// read started.
    pub fn on_read(&self, node: u64, tenant: &str, floor: u64, seen: u64) -> CheckResult {
        let mut state = self.state();
        state.reads_checked += 1;
        if seen < floor {
            return Err(format!(
                "stale read: replica {node} answered {tenant} last seq {seen}, but seq {floor} \
                 was acknowledged before the read started"
            ));
        }
        Ok(())
    }

    /// Checks one replica's metrics (one step of the sampler).
    ///
    /// - the Raft core is running;
    /// - a replica's vote never goes back, across restarts too (votes are durable);
    /// - within one incarnation, the applied index never goes back;
    /// - election safety: openraft 0.9's default leader id is `(term, node)` (several
    ///   leaders may share a term, the highest id wins), so each leader id has at most
    ///   one leader, and
    /// - leader completeness: a leader's log holds every entry applied by any replica
    ///   under a lower vote (those were committed before it was elected).
    pub fn on_metrics(
        &self,
        incarnation: u64,
        metrics: &Metrics,
        log_id_at: impl Fn(u64) -> Option<LogId>,
        last_log_index: Option<u64>,
        purged_index: Option<u64>,
    ) -> CheckResult {
        let node = metrics.id;
        if let Err(fatal) = &metrics.running_state {
            return Err(format!("replica {node}: Raft core stopped: {fatal}"));
        }
        let mut state = self.state();
        let vote = metrics.vote;
        let leader_id = vote.leader_id();
        let vote_key = (
            leader_id.get_term(),
            leader_id.voted_for().unwrap_or(0),
            vote.is_committed(),
        );
        if let Some(previous) = state.votes.get(&node) {
            if vote_key < *previous {
                return Err(format!(
                    "replica {node}: vote went back from {previous:?} to {vote_key:?} (a vote \
                     must be durable before it is used)"
                ));
            }
        }
        state.votes.insert(node, vote_key);
        let id_key = (vote_key.0, vote_key.1);
        if let Some(applied) = metrics.last_applied {
            let key = (node, incarnation);
            if let Some(previous) = state.applied_index.get(&key) {
                if applied.index < *previous {
                    return Err(format!(
                        "replica {node}: applied index went back from {previous} to {}",
                        applied.index
                    ));
                }
            }
            state.applied_index.insert(key, applied.index);
            let under = state.applied_under.entry(id_key).or_insert(0);
            *under = (*under).max(applied.index);
        }
        if metrics.state == ServerState::Leader {
            if leader_id.voted_for() != Some(node) {
                return Err(format!(
                    "replica {node} leads under a vote for {:?}",
                    leader_id.voted_for()
                ));
            }
            state.leaders.insert(id_key);
            let must_hold = state
                .applied_under
                .range(..id_key)
                .map(|(_, index)| *index)
                .max()
                .unwrap_or(0);
            if must_hold > 0 && purged_index.is_none_or(|purged| must_hold > purged) {
                let Some(committed) = state.applied.get(&must_hold).map(|first| first.log_id)
                else {
                    return Ok(());
                };
                if last_log_index.is_none_or(|last| last < must_hold) {
                    return Err(format!(
                        "leader completeness: leader {node} (term {}) lacks committed entry \
                         {committed}: its log ends at {last_log_index:?}",
                        id_key.0
                    ));
                }
                if let Some(mine) = log_id_at(must_hold) {
                    if mine != committed {
                        return Err(format!(
                            "leader completeness: leader {node} (term {}) has {mine} where \
                             {committed} was committed",
                            id_key.0
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// A replica's disk was wiped (after it left the membership): it starts over with
    /// an empty vote, which is not a vote going back.
    pub fn on_wipe(&self, node: u64) {
        self.state().votes.remove(&node);
    }

    /// Some replica applied an entry after the group's first (its initial membership):
    /// a majority holds that membership durably.
    pub fn committed_beyond_bootstrap(&self) -> bool {
        self.state().applied.range(1..).next().is_some()
    }

    pub fn leaders_seen(&self) -> usize {
        self.state().leaders.len()
    }

    pub fn terms_with_several_leaders(&self) -> usize {
        let state = self.state();
        let mut per_term: BTreeMap<u64, usize> = BTreeMap::new();
        for (term, _) in &state.leaders {
            *per_term.entry(*term).or_default() += 1;
        }
        per_term.values().filter(|count| **count > 1).count()
    }

    /// Every event a client sent, and every one acknowledged.
    pub fn sent_and_acked(&self) -> (usize, usize) {
        let state = self.state();
        (state.sent.len(), state.acked.len())
    }

    /// The end of a run: every replica's store, against the oracle and the others.
    pub fn check_final(&self, stores: &[(u64, &MemoryStore)], signer_name: &str) -> CheckResult {
        let state = self.state();
        for (node, store) in stores {
            check_store(*node, store)?;
            check_chain(store, signer_name).map_err(|error| format!("replica {node}: {error}"))?;
            for ((tenant, id), (seq, hash)) in &state.acked {
                let Some(tenant_state) = store.tenants.get(tenant) else {
                    return Err(format!(
                        "acknowledged event {tenant}/{id} lost: replica {node} has no tenant"
                    ));
                };
                let position = store.dedup.get(&(tenant_state.tenant_no, id.clone()));
                let Some((stream_no, stored_seq)) = position else {
                    return Err(format!(
                        "acknowledged event {tenant}/{id} lost on replica {node}"
                    ));
                };
                let Some(canonical) = store.events.get(&(*stream_no, *stored_seq)) else {
                    return Err(format!(
                        "acknowledged event {tenant}/{id}: replica {node}'s dedup entry \
                         points at stream {stream_no} seq {stored_seq}, which it lacks"
                    ));
                };
                if (*stored_seq, leaf_hash(canonical)) != (*seq, *hash) {
                    return Err(format!(
                        "acknowledged event {tenant}/{id}: receipt seq {seq}, replica {node} \
                         holds it at seq {stored_seq} or with another hash"
                    ));
                }
            }
            for (tenant, id) in &state.sent {
                if !state.acked.contains_key(&(tenant.clone(), id.clone())) {
                    return Err(format!(
                        "liveness: event {tenant}/{id} was never acknowledged"
                    ));
                }
            }
            let stored = store.events.len();
            if stored != state.sent.len() {
                return Err(format!(
                    "replica {node} stores {stored} events, clients sent {} distinct ids",
                    state.sent.len()
                ));
            }
        }
        if let Some(((first_node, first), rest)) = stores.split_first() {
            for (node, store) in rest {
                let what = if store.events != first.events {
                    "events"
                } else if store.dedup != first.dedup {
                    "dedup entries"
                } else if store.tenants != first.tenants {
                    "tenant states"
                } else if store.blocks != first.blocks {
                    "blocks"
                } else if store.checkpoints != first.checkpoints {
                    "checkpoints"
                } else {
                    continue;
                };
                return Err(format!(
                    "converged replicas {first_node} and {node} hold different {what}"
                ));
            }
        }
        Ok(())
    }
}

/// One replica's store on its own: per stream seqs are 1..=n, every event id once.
fn check_store(node: u64, store: &MemoryStore) -> CheckResult {
    let mut expected_next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut ids: BTreeSet<(String, String)> = BTreeSet::new();
    for ((stream_no, seq), canonical) in &store.events {
        let next = expected_next.entry(*stream_no).or_insert(1);
        if *seq != *next {
            return Err(format!(
                "gap: replica {node} stream {stream_no} has seq {seq} after {}",
                *next - 1
            ));
        }
        *next += 1;
        let stored = StoredEvent::decode_canonical(canonical)
            .map_err(|error| format!("replica {node}: stored event does not decode: {error}"))?;
        if !ids.insert((
            stored.event.tenant_id.clone(),
            stored.event.event_id.clone(),
        )) {
            return Err(format!(
                "duplicate: replica {node} stores event {}/{} twice",
                stored.event.tenant_id, stored.event.event_id
            ));
        }
    }
    if store.dedup.len() != store.events.len() {
        return Err(format!(
            "replica {node}: {} dedup entries for {} events",
            store.dedup.len(),
            store.events.len()
        ));
    }
    Ok(())
}

/// Every stream's blocks chain up from zero, cover its events in order with the right
/// roots, and every recorded checkpoint names the root of the tree of its size.
pub fn check_chain(store: &MemoryStore, signer_name: &str) -> CheckResult {
    for (tenant_id, state) in &store.tenants {
        let stream_no = state.stream_no;
        let mut previous = [0u8; 32];
        let mut next_seq = 1;
        let mut tree = CompactTree::new();
        let mut roots = Vec::new();
        for ((number, index), record) in store.blocks.range((stream_no, 0)..=(stream_no, u64::MAX))
        {
            debug_assert_eq!(*number, stream_no);
            let header = BlockHeader::decode(&record.header)
                .map_err(|error| format!("{tenant_id}: header does not decode: {error}"))?;
            if header.block_index != roots.len() as u64 || header.block_index != *index {
                return Err(format!("{tenant_id}: block index {}", header.block_index));
            }
            if header.prev_block_hash != previous {
                return Err(format!(
                    "{tenant_id}: chain broken at block {}",
                    header.block_index
                ));
            }
            if header.first_seq != next_seq {
                return Err(format!(
                    "{tenant_id}: block {} not contiguous",
                    header.block_index
                ));
            }
            let mut leaves = Vec::with_capacity(header.count as usize);
            for seq in header.first_seq..=header.last_seq() {
                let Some(canonical) = store.events.get(&(stream_no, seq)) else {
                    return Err(format!(
                        "{tenant_id}: block {} covers missing seq {seq}",
                        header.block_index
                    ));
                };
                leaves.push(leaf_hash(canonical));
            }
            if root_of(&leaves) != header.merkle_root {
                return Err(format!(
                    "{tenant_id}: block {} root does not match its events in seq order",
                    header.block_index
                ));
            }
            if trail_node::ledger::block_hash(&record.header) != record.block_hash {
                return Err(format!(
                    "{tenant_id}: block {} hash is not its header's",
                    header.block_index
                ));
            }
            previous = record.block_hash;
            next_seq = header.last_seq() + 1;
            tree.push(record.block_hash);
            roots.push(tree.root());
            if tree.root() != record.tree_root_after {
                return Err(format!(
                    "{tenant_id}: tree root after block {}",
                    header.block_index
                ));
            }
        }
        if state.chain.blocks.len() != roots.len() as u64 {
            return Err(format!(
                "{tenant_id}: tenant state counts {} blocks, the store holds {}",
                state.chain.blocks.len(),
                roots.len()
            ));
        }
        for ((_, size), note) in store
            .checkpoints
            .range((stream_no, 0)..=(stream_no, u64::MAX))
        {
            let body = CheckpointBody::parse_note(note)
                .map_err(|error| format!("{tenant_id}: checkpoint does not parse: {error}"))?;
            if body.tree_size != *size || *size == 0 || *size as usize > roots.len() {
                return Err(format!("{tenant_id}: checkpoint size {size}"));
            }
            if body.root != roots[*size as usize - 1] {
                return Err(format!("{tenant_id}: checkpoint {size} root"));
            }
            if !note.contains(&format!("\n\n\u{2014} {signer_name} ")) {
                return Err(format!("{tenant_id}: checkpoint {size} not signed"));
            }
        }
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
