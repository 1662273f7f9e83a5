//! Bugs the Raft harness found, each pinned by its seed.
//!
//! A seed replays only with the harness code that found it: if a change to the
//! harness (plan, workload, fault schedule) makes a pinned seed stop reproducing, find
//! a new one with the command in the test's comment and update the seed.

use trail_sim::raft;

/// Seed 495: openraft 0.9.25 restores a leader after a crash as leader of its old term
/// (its vote is committed), with a committed index rebuilt from the state machine's
/// applied id: the committed id is not fsynced (as in `node/src/storage/log_store.rs`),
/// so it can be below entries the leader acknowledged before the crash.
/// `Raft::get_read_log_id` (and `ensure_linearizable`) then returns
/// max(committed, first entry of the term), which is below an acknowledged write: a
/// "linearizable" read misses it. The harness's reads also wait for the confirmed
/// leader's last log index, which holds every acknowledged write.
///
/// Found with `cargo run -p trail-sim -- --seeds 0..2000 --openraft-read-index`.
#[test]
fn seed_495_openraft_read_index_is_stale_after_leader_restart() {
    let openraft_only = raft::Options {
        openraft_read_index: true,
        ..raft::Options::default()
    };
    let failure = raft::run(495, &openraft_only).expect_err(
        "seed 495 no longer reproduces the stale read index; the harness changed: find a \
         new seed with `--seeds 0..3000 --openraft-read-index --fail-fast` and update this test",
    );
    assert!(failure.message.starts_with("stale read:"), "{failure}");
    raft::run(495, &raft::Options::default()).expect("reads that wait for the leader's log pass");
}

/// Seed 28399: openraft 0.9.25 keeps a leader's replication streams running after it
/// steps down (`QuitLeader` drops only the leader data). Here replica 4 crashes, comes
/// back as leader of its old term 4 (its vote is committed), learns of term 5 and
/// becomes a follower, installs a snapshot and purges its log up to 36; its stale
/// stream to replica 5 (cut off during term 5, so still at vote term 4) then reads
/// `[21, 39)` from the log, gets `[37, 38]`, and sends them after `prev_log_id` 20.
/// Replica 5 takes `prev` 20 as present (it is below its committed index) and appends
/// 37 after 32: a hole; it then applies 32, 37, 38 as consecutive entries and diverges
/// (and openraft panics in `handle_apply_result`).
///
/// openraft's `try_get_log_entries` contract allows missing entries, and the node's
/// fjall log store returns whatever part of the range exists, as `--gapped-log-reads`
/// does. The harness's log reader returns only the entries that follow the range's
/// start without a gap (`limited_get_log_entries`), so the stale stream sends a
/// heartbeat instead.
///
/// Found before disk faults existed, with `cargo run --release -p trail-sim --
/// --seeds 2000..32000 --gapped-log-reads`; it replays with `--no-disk-faults` (disk
/// faults draw from RNGs of their own, so without them a seed runs as it did then).
#[test]
fn seed_28399_gapped_log_read_makes_a_hole_in_a_follower_log() {
    let as_found = raft::Options {
        no_disk_faults: true,
        ..raft::Options::default()
    };
    let gapped = raft::Options {
        gapped_log_reads: true,
        ..as_found.clone()
    };
    let failure = raft::run(28399, &gapped).expect_err(
        "seed 28399 no longer reproduces the log hole; the harness changed: find a new \
         seed with `--seeds 0..100000 --gapped-log-reads --no-disk-faults --fail-fast` and \
         update this test",
    );
    // In a release build the follower appends after a hole; in a debug build openraft's
    // own `debug_assert` (entries must follow `prev_log_id`) stops its Raft core first.
    assert!(
        failure.message.starts_with("log hole:") || failure.message.contains("Raft core stopped"),
        "{failure}"
    );
    raft::run(28399, &as_found).expect("contiguous log reads pass");
    raft::run(28399, &raft::Options::default()).expect("passes with disk faults too");
}

/// Seed 11974 (found by the fsync-error fault): a crash while replica 3 installs a
/// snapshot. Replica 3 (state machine at index 9, log `8..=9`, current snapshot
/// `1-7-1`) receives snapshot `1-15-2`; openraft 0.9.25's `install_full_snapshot` hands
/// it to the state machine and pushes `PurgeLog(..=15)` with no condition; then the
/// install's fsync fails and the crash keeps a prefix of the unsynced journal. For the
/// replica to restart, that prefix must never hold (openraft's startup purges the log
/// to the applied id when the log ends below it, then requires `purged <= snapshot <=
/// committed`; a release build does not check it, the harness does at every restart):
///
/// - the purge without the install (`eager_purge`: the log store purges at once, as
///   `node/src/storage/log_store.rs` does): log purged to 15, state machine at 9,
///   snapshot at 7: entries 10..=15 are nowhere. The harness's log store defers a
///   purge beyond what its state machine has applied or installed until it has, so
///   the purge is journaled after it.
/// - the installed state without the snapshot pointer (`split_install`: two journal
///   changes, as `node/src/storage/state_machine.rs` writes them: the state with its
///   applied id in a batch, then the pointer): state machine at 15, snapshot at 7, log
///   ends at 9; openraft purges to 15 at startup and 10..=15 are in no snapshot (in a
///   debug build, `validit` panics in `Engine::startup`). The harness installs the state
///   and the pointer as one atomic change.
///
/// Found with `cargo run --release -p trail-sim -- --seeds 0..100000 --gapped-log-reads`
/// when the log store purged at once (the first case: the replica cannot apply 10..=15,
/// its Raft core stops). With the purge deferred the seed passed in release, but failed
/// in CI's debug build, where openraft's `validit` checks caught the second case; the
/// harness now checks the state every restart starts on, in both builds.
#[test]
fn seed_11974_crash_during_snapshot_install_loses_log() {
    for (flag, broken) in [
        (
            "--eager-purge",
            raft::Options {
                eager_purge: true,
                ..raft::Options::default()
            },
        ),
        (
            "--split-install",
            raft::Options {
                split_install: true,
                ..raft::Options::default()
            },
        ),
    ] {
        let failure = raft::run(11974, &broken).expect_err(&format!(
            "seed 11974 with {flag} no longer reproduces the crash during an install; the \
             harness changed: find a new seed with `--seeds 0..100000 {flag} --fail-fast` and \
             update this test"
        ));
        assert!(
            failure.message.contains("purged entries in no snapshot")
                || failure.message.contains("Raft core stopped")
                || failure.message.contains("does not start on its own disk"),
            "{flag}: {failure}"
        );
    }
    raft::run(11974, &raft::Options::default())
        .expect("a deferred purge and an atomic install pass");
}
