//! The simulation is deterministic and its checkers pass.
//!
//! Steps: run 20 seeds twice and compare trace hashes; check two different seeds give
//! different traces; run 300 more seeds once, each must pass every invariant.

use trail_sim::{run, RunOptions};

#[test]
fn same_seed_same_trace_for_20_seeds() {
    for seed in 0..20 {
        let first = run(seed, RunOptions::default());
        let second = run(seed, RunOptions::default());
        assert_eq!(
            first.trace_hash, second.trace_hash,
            "seed {seed} is not deterministic"
        );
    }
    assert_ne!(
        run(1, RunOptions::default()).trace_hash,
        run(2, RunOptions::default()).trace_hash
    );
}

#[test]
fn three_hundred_seeds_pass_every_invariant() {
    let mut crashes = 0;
    let mut duplicates = 0;
    for seed in 100..400 {
        let report = run(seed, RunOptions::default());
        crashes += report.crashes;
        duplicates += report.duplicates_sent;
    }
    // The faults the checkers guard against did happen.
    assert!(crashes > 100, "only {crashes} crashes");
    assert!(duplicates > 1_000, "only {duplicates} duplicates");
}
