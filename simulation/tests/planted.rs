//! The checkers are not hollow: each planted bug is caught within 100 seeds, and the
//! failing seed replays the same failure (same message, same trace hash).
//!
//! Seeds run in order and each bug stops at its first failing seed, so this is quick.

use trail_sim::raft::{self, PlantedBug};

fn first_failure(bug: PlantedBug) -> raft::Failure {
    let options = raft::Options {
        planted: Some(bug),
        ..raft::Options::default()
    };
    for seed in 0..100 {
        if let Err(failure) = raft::run(seed, &options) {
            let replayed = raft::run(seed, &options).expect_err("the failing seed fails again");
            assert_eq!(replayed.message, failure.message, "{}: replay", bug.name());
            assert_eq!(
                replayed.trace_hash,
                failure.trace_hash,
                "{}: replay",
                bug.name()
            );
            assert_eq!(
                replayed.virtual_ms,
                failure.virtual_ms,
                "{}: replay",
                bug.name()
            );
            return failure;
        }
    }
    panic!("planted bug {} not caught in 100 seeds", bug.name());
}

#[test]
fn ack_before_fsync_is_caught() {
    let failure = first_failure(PlantedBug::AckBeforeFsync);
    // An acknowledged entry lost with the unsynced tail shows as a log id reused for
    // another entry, a leader missing a committed entry, or a lost acknowledged event.
    assert!(
        failure.message.contains("log matching")
            || failure.message.contains("leader completeness")
            || failure.message.contains("acknowledged")
            || failure.message.contains("state machine safety")
            || failure.message.contains("Raft core stopped"),
        "{failure}"
    );
}

#[test]
fn apply_twice_after_restart_is_caught() {
    let failure = first_failure(PlantedBug::ApplyTwiceAfterRestart);
    assert!(
        failure.message.contains("applied twice") || failure.message.contains("duplicate"),
        "{failure}"
    );
}

#[test]
fn skip_seq_is_caught() {
    let failure = first_failure(PlantedBug::SkipSeq);
    assert!(failure.message.starts_with("gap:"), "{failure}");
}

#[test]
fn seal_order_is_caught() {
    let failure = first_failure(PlantedBug::SealOrder);
    assert!(
        failure.message.contains("sealed different blocks")
            || failure
                .message
                .contains("apply is not a function of the log"),
        "{failure}"
    );
}

#[test]
fn stale_read_is_caught() {
    let failure = first_failure(PlantedBug::StaleRead);
    assert!(failure.message.starts_with("stale read:"), "{failure}");
}

#[test]
fn skip_checksum_is_caught() {
    // A flipped bit served or applied shows as diverging replicas, broken chains,
    // undecodable events, or a Raft core that stops on its own corrupt log. (The
    // harness's end-of-run scrub is off for this bug, so its own checksums do not
    // catch it.)
    let failure = first_failure(PlantedBug::SkipChecksum);
    assert!(!failure.message.contains("fails its checksum"), "{failure}");
}

#[test]
fn fsync_error_ignored_is_caught() {
    // The changes a failed fsync covered are lost at the next crash, after they were
    // acknowledged: votes go back, logs lose entries, replicas diverge.
    first_failure(PlantedBug::FsyncErrorIgnored);
}

#[test]
fn wipe_in_place_is_caught() {
    // A wiped voter's empty vote elects a leader that lacks committed entries.
    let failure = first_failure(PlantedBug::WipeInPlace);
    assert!(
        failure.message.contains("leader completeness")
            || failure.message.contains("acknowledged")
            || failure.message.contains("state machine safety")
            || failure.message.contains("log matching")
            || failure.message.contains("not a function of the log"),
        "{failure}"
    );
}
