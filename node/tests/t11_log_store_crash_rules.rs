//! The log store's two rules about crashes that openraft 0.9.25 does not keep by
//! itself (docs/SIMULATION.md, "Bugs found"), on the real fjall store:
//!
//! - seed 28399: replication reads (`limited_get_log_entries`) return only the entries
//!   that follow the range's start without a gap, never entries after a purged or
//!   missing head; other reads return one gap-free run;
//! - seed 11974: a purge beyond the state machine's applied index is visible to
//!   openraft at once but reaches the journal only after the state machine has applied
//!   (or installed) up to it, and an append that would leave a hole in the journaled log
//!   meanwhile waits for the install.
//!
//! - the entries kept in memory for apply's read (`Unread`) always equal the log:
//!   a read after a truncate never returns an entry the log no longer holds.
//!
//! Steps: open a node store in a temporary directory and shard 1's state machine and log
//! store on it; drive them through openraft's storage traits as openraft does; ask the
//! log store what is in the journal (`journaled_entry`, `journaled_purge`).

use std::time::Duration;

use openraft::storage::{RaftLogReaderExt, RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use trail_node::consensus::{Entry, LogId};
use trail_node::storage::{LogStore, NodeStore, StateMachine};

struct Shard {
    _dir: TempDir,
    log: LogStore,
    sm: StateMachine,
}

fn open_shard() -> Shard {
    let dir = TempDir::new().expect("temporary directory");
    let store = NodeStore::open(dir.path()).expect("open node store");
    let keyspaces = store.shard(1).expect("shard keyspaces");
    let sm = StateMachine::open(&store, &keyspaces, None).expect("state machine");
    let log = LogStore::open(&store, &keyspaces, sm.applied.clone()).expect("log store");
    Shard { _dir: dir, log, sm }
}

fn log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn blank(index: u64) -> Entry {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Blank,
    }
}

fn blanks(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(blank).collect()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|entry| entry.log_id.index).collect()
}

impl Shard {
    /// Is the entry at `index` in the journal (whatever openraft sees)?
    fn journaled(&self, index: u64) -> bool {
        self.log
            .journaled_entry(index)
            .expect("read the journaled log")
    }

    /// The purged id as journaled.
    fn journaled_purge(&self) -> Option<LogId> {
        self.log
            .journaled_purge()
            .expect("read the journaled purge")
    }

    async fn apply(&mut self, indexes: std::ops::RangeInclusive<u64>) {
        self.sm.apply(blanks(indexes)).await.expect("apply");
    }
}

/// Seed 28399. A stale replication stream of a replica that purged its log to 5 reads
/// `[3, 9)`: it must get nothing (the stream then sends a heartbeat), not `6..=8`
/// after `prev_log_id` 2. The same for a range whose head is missing above the purge.
#[tokio::test]
async fn replication_reads_stop_at_a_purged_or_missing_head() {
    let mut shard = open_shard();
    shard.apply(0..=5).await;
    shard.log.blocking_append(blanks(0..=10)).await.unwrap();
    // A hole at 11 (openraft never writes one; a journal that lost entries could).
    shard.log.blocking_append(blanks(12..=14)).await.unwrap();
    shard.log.purge(log_id(5)).await.unwrap();

    let log = &mut shard.log;
    assert_eq!(
        indexes(&log.limited_get_log_entries(3, 9).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        indexes(&log.limited_get_log_entries(5, 9).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        indexes(&log.limited_get_log_entries(6, 9).await.unwrap()),
        vec![6, 7, 8]
    );
    assert_eq!(
        indexes(&log.limited_get_log_entries(9, 15).await.unwrap()),
        vec![9, 10]
    );
    assert_eq!(
        indexes(&log.limited_get_log_entries(11, 15).await.unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!(
        indexes(&log.limited_get_log_entries(12, 20).await.unwrap()),
        vec![12, 13, 14]
    );

    // Other reads skip the purged prefix (openraft allows missing entries there, and
    // its callers that need a whole range check it) but never read across a hole.
    assert_eq!(
        indexes(&log.try_get_log_entries(3..9).await.unwrap()),
        vec![6, 7, 8]
    );
    assert_eq!(
        indexes(&log.try_get_log_entries(8..15).await.unwrap()),
        vec![8, 9, 10]
    );
    assert_eq!(
        indexes(&log.try_get_log_entries(..).await.unwrap()),
        vec![6, 7, 8, 9, 10]
    );
    assert_eq!(
        indexes(&log.try_get_log_entries(11..=14).await.unwrap()),
        vec![12, 13, 14]
    );
    assert!(log.try_get_log_entry(5).await.unwrap().is_none());
}

/// Seed 11974. openraft purges the log a received snapshot covers before the state
/// machine has it; journaled at once, a crash could keep the purge and lose the apply.
#[tokio::test]
async fn purge_above_applied_is_journaled_only_after_apply() {
    let mut shard = open_shard();
    shard.apply(0..=3).await;
    shard.log.blocking_append(blanks(0..=10)).await.unwrap();

    shard.log.purge(log_id(8)).await.unwrap();
    // openraft sees the purge at once ...
    let state = shard.log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(8)));
    assert_eq!(state.last_log_id, Some(log_id(10)));
    let readable = shard.log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(indexes(&readable), vec![9, 10]);
    // ... but the journal does not have it: the state machine is at 3.
    assert_eq!(shard.log.pending_purge(), Some(log_id(8)));
    assert!(
        shard.journaled(4) && shard.journaled(8),
        "purged in the journal early"
    );
    assert_eq!(shard.journaled_purge(), None);

    shard.apply(4..=7).await;
    shard.log.blocking_append(blanks(11..=11)).await.unwrap();
    assert!(shard.journaled(8), "purged beyond the applied index 7");
    assert_eq!(shard.journaled_purge(), None);

    // Once the state machine is there, the next log write journals the purge first.
    shard.apply(8..=8).await;
    shard.log.blocking_append(blanks(12..=12)).await.unwrap();
    assert_eq!(shard.log.pending_purge(), None);
    assert!(!shard.journaled(0) && !shard.journaled(8));
    assert!(shard.journaled(9) && shard.journaled(12));
    assert_eq!(shard.journaled_purge(), Some(log_id(8)));

    // A purge the state machine has reached (the snapshot policy's) is journaled at once.
    shard.apply(9..=10).await;
    shard.log.purge(log_id(10)).await.unwrap();
    assert_eq!(shard.journaled_purge(), Some(log_id(10)));
    assert!(!shard.journaled(10) && shard.journaled(11));
    assert_eq!(
        indexes(&shard.log.try_get_log_entries(0..).await.unwrap()),
        vec![11, 12]
    );
}

/// Seed 11974, the entries after the snapshot: while the install runs, openraft may
/// append the entries that follow the snapshot. Journaled before the install, they
/// could survive a crash that loses it, after a hole. So the append waits until the
/// install is in the journal, and the purge is journaled between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_after_a_deferred_purge_waits_for_the_install() {
    // The leader's side: a snapshot of 0..=10.
    let mut source = open_shard();
    source.apply(0..=10).await;
    let mut builder = source.sm.get_snapshot_builder().await;
    let snapshot = builder.build_snapshot().await.expect("build snapshot");
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(10)));

    // A follower at 3 with log 0..=5 receives it. openraft hands the snapshot to the
    // state machine worker and purges ..=10 in the log store at once.
    let mut follower = open_shard();
    follower.apply(0..=3).await;
    follower.log.blocking_append(blanks(0..=5)).await.unwrap();
    follower.log.purge(log_id(10)).await.unwrap();
    assert_eq!(follower.log.pending_purge(), Some(log_id(10)));

    // The leader's next entries arrive before the install is done.
    let mut appender = follower.log.clone();
    let append = tokio::spawn(async move { appender.blocking_append(blanks(11..=12)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !append.is_finished(),
        "appended after a hole before the install"
    );
    assert!(!follower.journaled(11));
    assert!(follower.journaled(5), "purged before the install");

    let mut bytes = Vec::new();
    let mut data = snapshot.snapshot;
    tokio::io::AsyncReadExt::read_to_end(&mut data, &mut bytes)
        .await
        .unwrap();
    let mut receiving = follower.sm.begin_receiving_snapshot().await.unwrap();
    receiving.write_all(&bytes).await.unwrap();
    receiving.flush().await.unwrap();
    follower
        .sm
        .install_snapshot(&snapshot.meta, receiving)
        .await
        .expect("install");

    tokio::time::timeout(Duration::from_secs(10), append)
        .await
        .expect("the append goes on once the install is in the journal")
        .expect("task")
        .expect("append");
    assert_eq!(
        follower.sm.applied_state().await.unwrap().0,
        Some(log_id(10))
    );
    assert_eq!(follower.journaled_purge(), Some(log_id(10)));
    assert!(!follower.journaled(5) && follower.journaled(11) && follower.journaled(12));
    assert_eq!(
        indexes(&follower.log.try_get_log_entries(0..).await.unwrap()),
        vec![11, 12]
    );
}

/// Apply's read takes the entries appended last from memory; after a truncate (a new
/// leader overwrote them) those entries must be gone from memory too, and entries
/// read once are read again from the journal, the same.
#[tokio::test]
async fn entries_read_from_memory_equal_the_log() {
    let mut shard = open_shard();
    shard.log.blocking_append(blanks(0..=10)).await.unwrap();
    let log = &mut shard.log;
    assert_eq!(
        indexes(&log.try_get_log_entries(2..5).await.unwrap()),
        vec![2, 3, 4]
    );
    // Taken from memory above: read again from the journal.
    assert_eq!(
        indexes(&log.try_get_log_entries(2..5).await.unwrap()),
        vec![2, 3, 4]
    );

    log.truncate(log_id(6)).await.unwrap();
    assert_eq!(
        indexes(&log.try_get_log_entries(5..8).await.unwrap()),
        vec![5],
        "an entry truncated away was read"
    );
    let term_2 = |index| Entry {
        log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
        payload: EntryPayload::Blank,
    };
    log.blocking_append((6..=8).map(term_2).collect::<Vec<_>>())
        .await
        .unwrap();
    for _ in 0..2 {
        let read = log.try_get_log_entries(6..9).await.unwrap();
        let ids: Vec<LogId> = read.iter().map(|entry| entry.log_id).collect();
        assert_eq!(
            ids,
            vec![term_2(6).log_id, term_2(7).log_id, term_2(8).log_id]
        );
    }
}
