//! trail-sim: deterministic simulation of Trail.
//!
//! Four harnesses, one seed per run; the first three give the same trace hash every
//! time:
//! - [`raft`]: real openraft groups running the real ledger apply code over in-memory
//!   disks with a crash model and disk faults and a faulty in-memory network, on one
//!   paused current-thread runtime, with continuous checkers (the default of the CLI);
//! - [`turmoil`]: three simulated hosts, each running a replica of two openraft groups
//!   on the same disks, talking real tonic gRPC (the Raft transport and `trail.v1`) over
//!   turmoil's simulated TCP, with host crashes and network faults;
//! - this module's [`run`]: the ledger's apply logic (`trail_node::ledger`, the very
//!   code the server runs) on three replicas of one shard without Raft, with a seeded
//!   workload of batches, client retries (duplicate event ids) and replica crashes
//!   that lose everything not yet committed to their store; checkers after every step;
//! - [`disk`], the real-disk mode: the node's own shard code (openraft over
//!   `node/src/storage` on fjall) on three replicas in temporary directories, with
//!   process crashes, storage crash points and network faults (not deterministic:
//!   fjall has threads of its own).
//!
//! See `docs/SIMULATION.md`.

use std::collections::{BTreeMap, BTreeSet};

pub mod disk;
pub mod raft;
pub mod turmoil;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use trail_node::ledger::{
    ActorKind, CheckpointBody, CheckpointDue, CheckpointNote, EventRecord, LeafHash, Ledger,
    LedgerCommand, LedgerWrite, MemoryStore, NoteSigner, Outcome, Replaced, StoredEvent,
};

pub const REPLICAS: usize = 3;

/// A replica's store: the ledger's in-memory storage seam, plus what a crash loses.
#[derive(Debug, Default, Clone)]
struct Store {
    committed: MemoryStore,
    /// Index (into the shared log) of the next command to apply.
    applied: usize,
    /// Writes since the last fsync, newest last: a crash takes them back (the Raft log,
    /// durable before apply, lets the replica apply the lost part again).
    unsynced: Vec<Unsynced>,
}

#[derive(Debug, Clone)]
enum Unsynced {
    Write(Replaced),
    Applied(usize),
}

/// `(stream, seq, leaf hash, deduplicated)` of one event, as the leader answered.
type SimReceipt = (String, u64, LeafHash, bool);

struct Replica {
    ledger: Ledger,
    store: Store,
}

impl Replica {
    fn new() -> Replica {
        Replica {
            ledger: Ledger::default(),
            store: Store::default(),
        }
    }

    /// A crash: unsynced writes are lost, and the in-memory ledger is rebuilt from the
    /// store, as the state machine does on restart.
    fn crash_and_restart(&mut self) {
        while let Some(unsynced) = self.store.unsynced.pop() {
            match unsynced {
                Unsynced::Write(replaced) => self.store.committed.undo(replaced),
                Unsynced::Applied(previous) => self.store.applied = previous,
            }
        }
        self.ledger = Ledger::from_tenants(self.store.committed.tenants.clone());
    }

    fn fsync(&mut self) {
        self.store.unsynced.clear();
    }

    /// Applies `count` commands from the log in one storage batch.
    /// `first_written` holds the first bytes any replica wrote at each position, so
    /// that "entry i is identical on every replica" is checked as writes happen.
    fn apply(
        &mut self,
        index: usize,
        log: &[LedgerCommand],
        count: usize,
        first_written: &mut BTreeMap<(u32, u64), Vec<u8>>,
        trace: &mut Trace,
    ) -> (Vec<SimReceipt>, Vec<CheckpointDue>) {
        let mut writes = Vec::new();
        let mut receipts = Vec::new();
        let mut due = Vec::new();
        let end = (self.store.applied + count).min(log.len());
        for command in &log[self.store.applied..end] {
            let response = self
                .ledger
                .apply(&self.store.committed, command, &mut writes)
                .expect("model lookups do not fail");
            due = response.checkpoints_due;
            for receipt in response.receipts {
                receipts.push((
                    receipt.stream,
                    receipt.seq,
                    receipt.leaf_hash,
                    receipt.deduplicated,
                ));
            }
        }
        self.ledger.seal_batch(&mut writes);
        for write in writes {
            if let LedgerWrite::Event {
                stream_no,
                seq,
                canonical,
            } = &write
            {
                let key = (*stream_no, *seq);
                // Gap-free: the previous seq of the stream is there already.
                let previous_seq_stored = self
                    .store
                    .committed
                    .events
                    .contains_key(&(*stream_no, seq.wrapping_sub(1)));
                assert!(
                    *seq == 1 || previous_seq_stored,
                    "replica {index}: stream {stream_no} seq {seq} written after a gap"
                );
                match first_written.get(&key) {
                    Some(first) => {
                        assert_eq!(first, canonical, "replica {index} disagrees on {key:?}")
                    }
                    None => {
                        first_written.insert(key, canonical.clone());
                    }
                }
            }
            let replaced = self.store.committed.execute(write);
            match &replaced {
                Replaced::Event(key, Some(_)) => panic!("replica {index}: {key:?} written twice"),
                Replaced::Dedup(key, Some(_)) => {
                    panic!("replica {index}: event id {key:?} stored twice")
                }
                Replaced::Block(key, Some(_)) => {
                    panic!("replica {index}: block {key:?} sealed twice")
                }
                Replaced::Checkpoint(key, Some(_)) => {
                    panic!("replica {index}: checkpoint {key:?} recorded twice")
                }
                _ => {}
            }
            self.store.unsynced.push(Unsynced::Write(replaced));
        }
        self.ledger.batch_committed();
        self.store
            .unsynced
            .push(Unsynced::Applied(self.store.applied));
        self.store.applied = end;
        trace.record(&format!(
            "apply upto={end} events={}",
            self.ledger.events_total()
        ));
        (receipts, due)
    }
}

/// A running hash of everything that happened, to compare runs of one seed.
#[derive(Default)]
pub struct Trace {
    hasher: Sha256,
    lines: Option<Vec<String>>,
    count: u64,
}

impl Trace {
    fn record(&mut self, line: &str) {
        self.count += 1;
        self.hasher.update(line.as_bytes());
        self.hasher.update(b"\n");
        if let Some(lines) = self.lines.as_mut() {
            lines.push(line.to_string());
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub trace_hash: String,
    pub trace_events: u64,
    pub events_stored: u64,
    pub duplicates_sent: u64,
    pub crashes: u64,
    pub trace: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub steps: usize,
    pub keep_trace: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            steps: 200,
            keep_trace: false,
        }
    }
}

/// Runs one seed; panics with a message naming the violated invariant.
pub fn run(seed: u64, options: RunOptions) -> RunReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut trace = Trace {
        lines: options.keep_trace.then(Vec::new),
        ..Trace::default()
    };
    let tenants = rng.gen_range(1..=8usize);
    let duplicate_rate = rng.gen_range(0.0..0.3);
    let crash_rate = rng.gen_range(0.0..0.2);
    let block_events_max = rng.gen_range(1..=12u32);
    let seal_rate = rng.gen_range(0.0..0.3);
    trace.record(&format!(
        "seed={seed} tenants={tenants} dup={duplicate_rate:.3} crash={crash_rate:.3} \
         block={block_events_max} seal={seal_rate:.3}"
    ));
    let signer = NoteSigner::new(
        "sim.trail",
        ed25519_dalek::SigningKey::from_bytes(&Sha256::digest(seed.to_be_bytes()).into()),
    )
    .expect("valid key name");
    let mut checkpoints_due: Vec<CheckpointDue> = Vec::new();

    let mut log: Vec<LedgerCommand> = Vec::new();
    let mut replicas: Vec<Replica> = (0..REPLICAS).map(|_| Replica::new()).collect();
    let mut sent_ids: Vec<(String, String)> = Vec::new();
    // First receipt of every event id, as the leader (replica 0) returned it.
    let mut first_receipts: BTreeMap<(String, String), (u64, LeafHash)> = BTreeMap::new();
    let mut duplicates_sent = 0u64;
    let mut crashes = 0u64;
    let mut first_written = BTreeMap::new();

    for step in 0..options.steps {
        // The leader proposes a batch; some events are retries of earlier ones.
        let batch_events = rng.gen_range(1..=16usize);
        let mut events = Vec::with_capacity(batch_events);
        for _ in 0..batch_events {
            let (tenant, event_id) = if !sent_ids.is_empty() && rng.gen_bool(duplicate_rate) {
                duplicates_sent += 1;
                sent_ids[rng.gen_range(0..sent_ids.len())].clone()
            } else {
                let tenant = format!("ten_{}", rng.gen_range(0..tenants));
                let id = (tenant, format!("e{step}-{}", events.len()));
                sent_ids.push(id.clone());
                id
            };
            events.push(event(&tenant, &event_id, step as i64));
        }
        let now = 1_700_000_000_000_000_000 + step as i64;
        log.push(LedgerCommand::Append {
            ingested_at_ns: now,
            block_events_max,
            events,
        });
        trace.record(&format!("propose step={step} log={}", log.len()));
        // The leader's sealer: checkpoints for what the last seal reported, and now and
        // then a seal of the blocks opened a few steps ago (or of one tenant, on demand).
        if !checkpoints_due.is_empty() {
            let notes = std::mem::take(&mut checkpoints_due)
                .into_iter()
                .map(|due| CheckpointNote {
                    note: signer.sign(&CheckpointBody {
                        origin: format!("sim.trail/{}", due.stream),
                        tree_size: due.tree_size,
                        root: due.root,
                        last_seq: due.last_seq,
                        time_ns: due.sealed_at_ns,
                    }),
                    tenant_id: due.tenant_id,
                })
                .collect();
            log.push(LedgerCommand::Checkpoint { notes });
        }
        if rng.gen_bool(seal_rate) {
            let tenant_id = rng
                .gen_bool(0.3)
                .then(|| format!("ten_{}", rng.gen_range(0..tenants)));
            log.push(LedgerCommand::Seal {
                sealed_at_ns: now,
                opened_at_or_before_ns: now - rng.gen_range(0..4),
                tenant_id,
            });
        }

        // Replicas apply at their own pace; the leader applies everything.
        for (index, replica) in replicas.iter_mut().enumerate() {
            if index > 0 && rng.gen_bool(crash_rate) {
                replica.crash_and_restart();
                crashes += 1;
                trace.record(&format!("crash replica={index}"));
            }
            let pending = log.len() - replica.store.applied;
            let count = if index == 0 {
                pending
            } else {
                rng.gen_range(0..=pending)
            };
            let start = replica.store.applied;
            let (receipts, due) = replica.apply(index, &log, count, &mut first_written, &mut trace);
            if index == 0 && matches!(log.last(), Some(LedgerCommand::Seal { .. })) {
                checkpoints_due = due;
            }
            if rng.gen_bool(0.5) {
                replica.fsync();
            }
            if index == 0 {
                check_receipts(&log[start..], &receipts, &mut first_receipts);
            }
        }
    }

    // Liveness: every replica catches up and all stores are identical.
    for (index, replica) in replicas.iter_mut().enumerate() {
        let pending = log.len() - replica.store.applied;
        replica.apply(index, &log, pending, &mut first_written, &mut trace);
    }
    check_replicas(&replicas);
    for replica in &replicas {
        check_chain(replica, &signer);
    }
    for replica in &replicas[1..] {
        let (mine, leader) = (&replica.store.committed, &replicas[0].store.committed);
        assert_eq!(mine.events, leader.events, "caught-up replicas differ");
        assert_eq!(
            mine.blocks, leader.blocks,
            "replicas sealed different blocks"
        );
        assert_eq!(
            mine.checkpoints, leader.checkpoints,
            "replicas recorded different checkpoints"
        );
    }
    let events_stored = replicas[0].store.committed.events.len() as u64;
    let distinct: BTreeSet<&(String, String)> = sent_ids.iter().collect();
    assert_eq!(
        events_stored as usize,
        distinct.len(),
        "stored events != distinct event ids sent"
    );

    RunReport {
        seed,
        trace_hash: hex(&trace.hasher.finalize()),
        trace_events: trace.count,
        events_stored,
        duplicates_sent,
        crashes,
        trace: trace.lines.unwrap_or_default(),
    }
}

/// A duplicate gets the first receipt's seq and hash; a new event the next seq.
fn check_receipts(
    commands: &[LedgerCommand],
    receipts: &[SimReceipt],
    first_receipts: &mut BTreeMap<(String, String), (u64, LeafHash)>,
) {
    let mut events = Vec::new();
    for command in commands {
        if let LedgerCommand::Append { events: batch, .. } = command {
            events.extend(batch.iter());
        }
    }
    assert_eq!(events.len(), receipts.len(), "one receipt per event");
    for (event, (_, seq, hash, deduplicated)) in events.iter().zip(receipts) {
        let key = (event.tenant_id.clone(), event.event_id.clone());
        match first_receipts.get(&key) {
            Some((first_seq, first_hash)) => {
                assert!(*deduplicated, "{key:?} recorded twice");
                assert_eq!(
                    (seq, hash),
                    (first_seq, first_hash),
                    "{key:?}: duplicate receipt differs"
                );
            }
            None => {
                assert!(!deduplicated, "{key:?}: new event reported as duplicate");
                first_receipts.insert(key, (*seq, *hash));
            }
        }
    }
}

/// Full check at the end of a run: per stream seqs are 1..=n; entry i is identical on
/// every replica that has it; no event id is stored twice in a tenant.
fn check_replicas(replicas: &[Replica]) {
    for (index, replica) in replicas.iter().enumerate() {
        let mut expected_next: BTreeMap<u32, u64> = BTreeMap::new();
        let mut ids: BTreeSet<(String, String)> = BTreeSet::new();
        for ((stream_no, seq), canonical) in &replica.store.committed.events {
            let next = expected_next.entry(*stream_no).or_insert(1);
            assert_eq!(
                *seq, *next,
                "replica {index}: stream {stream_no} has a gap before seq {seq}"
            );
            *next += 1;
            let stored = StoredEvent::decode_canonical(canonical).expect("stored events decode");
            assert!(
                ids.insert((
                    stored.event.tenant_id.clone(),
                    stored.event.event_id.clone()
                )),
                "replica {index}: event id stored twice"
            );
        }
        for other in &replicas[index + 1..] {
            for (key, canonical) in &replica.store.committed.events {
                if let Some(theirs) = other.store.committed.events.get(key) {
                    assert_eq!(canonical, theirs, "replicas disagree on {key:?}");
                }
            }
        }
    }
}

/// Every stream's blocks chain up from zero, cover its events in order with the right
/// roots, and every recorded checkpoint names the root of the tree of its size.
fn check_chain(replica: &Replica, signer: &NoteSigner) {
    if let Err(error) = raft::check::check_chain(&replica.store.committed, signer.name()) {
        panic!("{error}");
    }
}

fn event(tenant: &str, event_id: &str, step: i64) -> EventRecord {
    EventRecord {
        event_id: event_id.to_string(),
        tenant_id: tenant.to_string(),
        actor_kind: ActorKind::User,
        actor_id: format!("usr_{}", step % 5),
        actor_email: String::new(),
        actor_name: String::new(),
        action: "auth.login".to_string(),
        resource_type: "session".to_string(),
        resource_id: format!("ses_{step}"),
        outcome: Outcome::Success,
        occurred_at_ns: 1_700_000_000_000_000_000 + step,
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json: String::new(),
        subject_id: format!("usr_{}", step % 5),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
