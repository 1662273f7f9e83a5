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
/// Found with `cargo run --release -p trail-sim -- --seeds 2000..32000`.
#[test]
fn seed_28399_gapped_log_read_makes_a_hole_in_a_follower_log() {
    let gapped = raft::Options {
        gapped_log_reads: true,
        ..raft::Options::default()
    };
    let failure = raft::run(28399, &gapped).expect_err(
        "seed 28399 no longer reproduces the log hole; the harness changed: find a new \
         seed with `--seeds 0..100000 --gapped-log-reads --fail-fast` and update this test",
    );
    // In a release build the follower appends after a hole; in a debug build openraft's
    // own `debug_assert` (entries must follow `prev_log_id`) stops its Raft core first.
    assert!(
        failure.message.starts_with("log hole:") || failure.message.contains("Raft core stopped"),
        "{failure}"
    );
    raft::run(28399, &raft::Options::default()).expect("contiguous log reads pass");
}
