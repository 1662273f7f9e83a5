//! Apply checks what it applies (`ledger::recheck`), on the real state machine: a
//! committed entry with an event no stored event can be (a tenant id that is a path, a
//! field beyond its bound), or a checkpoint note not signed
//! with the checkpoint key, is refused whole (a response saying why, an error log, a
//! counter) and applies nothing, the same way on every replica; the entries around it
//! apply as usual.

mod support;

use std::sync::atomic::Ordering;

use ed25519_dalek::SigningKey;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use support::event;
use tempfile::TempDir;
use trail_node::consensus::{Entry, LogId};
use trail_node::ledger::{
    CheckpointBody, CheckpointNote, EventRecord, LedgerCommand, LedgerResponse, NoteSigner,
};
use trail_node::storage::{NodeStore, StateMachine};

const INGESTED_AT_NS: i64 = 1_700_000_000_000_000_000;

fn entry(index: u64, command: LedgerCommand) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn append(index: u64, events: Vec<EventRecord>) -> Entry {
    entry(
        index,
        LedgerCommand::Append {
            ingested_at_ns: INGESTED_AT_NS,
            block_events_max: 1_024,
            events,
        },
    )
}

fn signer(seed: u8) -> NoteSigner {
    NoteSigner::new("trail.local", SigningKey::from_bytes(&[seed; 32])).expect("signer")
}

/// A replica of shard 1 that checks notes against the key of `signer(1)`.
fn replica() -> (TempDir, StateMachine) {
    let dir = TempDir::new().expect("temporary directory");
    let store = NodeStore::open(dir.path()).expect("open node store");
    let keyspaces = store.shard(1).expect("shard keyspaces");
    let sm = StateMachine::open(&store, &keyspaces, None).expect("state machine");
    sm.check_notes_with(signer(1).verifier());
    (dir, sm)
}

/// Applies the scenario's entries one by one; returns every response.
async fn run(sm: &StateMachine) -> Vec<LedgerResponse> {
    let mut responses = Vec::new();
    let apply = |entry: Entry| {
        let mut sm = sm.clone();
        async move { sm.apply([entry]).await.expect("apply").remove(0) }
    };
    // 1: three good events.
    responses.push(apply(append(1, (0..3).map(|n| event("ten_a", n)).collect())).await);
    // 2: a good event and one whose tenant id is a path out of the checkpoint directory.
    responses.push(apply(append(2, vec![event("ten_a", 3), event("../../etc", 4)])).await);
    // 3: an event whose action is beyond any stored action's bound.
    let mut bad_action = event("ten_b", 5);
    bad_action.action = "doc.read".repeat(100);
    responses.push(apply(append(3, vec![bad_action])).await);
    // 4: seal ten_a's block.
    let sealed = apply(entry(
        4,
        LedgerCommand::Seal {
            sealed_at_ns: INGESTED_AT_NS,
            opened_at_or_before_ns: i64::MAX,
            tenant_id: None,
        },
    ))
    .await;
    let due = sealed.checkpoints_due[0].clone();
    responses.push(sealed);
    let body = CheckpointBody {
        origin: format!("trail.local/{}", due.stream),
        tree_size: due.tree_size,
        root: due.root,
        last_seq: due.last_seq,
        time_ns: due.sealed_at_ns,
    };
    let note = |signer: &NoteSigner| LedgerCommand::Checkpoint {
        notes: vec![CheckpointNote {
            tenant_id: due.tenant_id.clone(),
            note: signer.sign(&body),
        }],
    };
    // 5: the right checkpoint, signed with another key.
    responses.push(apply(entry(5, note(&signer(2)))).await);
    // 6: the same checkpoint signed with the checkpoint key.
    responses.push(apply(entry(6, note(&signer(1)))).await);
    responses
}

#[tokio::test]
async fn forged_entries_are_refused_whole_and_apply_nothing() {
    let (_dir, sm) = replica();
    let responses = run(&sm).await;

    assert_eq!(responses[0].refused, None);
    assert_eq!(responses[0].receipts.len(), 3);

    let refused = responses[1].refused.as_deref().expect("a bad tenant id");
    assert!(refused.starts_with("event 1: tenant_id:"), "{refused}");
    assert!(
        responses[1].receipts.is_empty(),
        "no receipt of a refused entry"
    );
    let refused = responses[2].refused.as_deref().expect("a bad action");
    assert!(refused.starts_with("event 0: action:"), "{refused}");

    // Nothing of entries 2 and 3 was applied: not the good event of entry 2 either.
    assert_eq!(sm.counters.events_total.load(Ordering::Relaxed), 3);
    assert_eq!(sm.counters.tenants.load(Ordering::Relaxed), 1);
    assert_eq!(responses[3].checkpoints_due.len(), 1);
    assert_eq!(responses[3].checkpoints_due[0].last_seq, 3);

    let refused = responses[4].refused.as_deref().expect("a forged signature");
    assert!(refused.contains("signature"), "{refused}");
    assert_eq!(responses[4].checkpoints_recorded, 0);
    // The forged note did not advance the stream's checkpoint: the signed one records.
    assert_eq!(responses[5].refused, None);
    assert_eq!(responses[5].checkpoints_recorded, 1);

    assert_eq!(sm.counters.entries_refused.load(Ordering::Relaxed), 3);
    // A refused entry is applied as an index all the same: the log moves on.
    assert_eq!(sm.counters.last_applied_index.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn every_replica_refuses_the_same_entries() {
    let (_one, first) = replica();
    let (_two, second) = replica();
    assert_eq!(run(&first).await, run(&second).await);
}
