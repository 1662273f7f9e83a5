//! The simulations are deterministic and their checkers pass.
//!
//! Ledger harness: 20 seeds twice give the same trace hashes, two seeds differ, and 300
//! more seeds pass every invariant.
//! Raft harness (openraft groups with the ledger under faults): the same for 20 seeds,
//! and 500 seeds pass every invariant, run on all cores, with every kind of fault
//! (network, crash, power failure, lost unsynced writes, bit flips, fsync errors,
//! wiped disks) seen many times.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use trail_sim::raft;
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

/// Runs `seeds` on every core; returns each seed's outcome, in seed order.
fn run_raft_seeds(
    seeds: std::ops::Range<u64>,
    options: &raft::Options,
) -> Vec<Result<raft::Report, raft::Failure>> {
    let threads = std::thread::available_parallelism().map_or(2, |count| count.get());
    let next = AtomicU64::new(seeds.start);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= seeds.end {
                    return;
                }
                let outcome = raft::run(seed, options);
                results.lock().unwrap().push((seed, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(seed, _)| *seed);
    results.into_iter().map(|(_, outcome)| outcome).collect()
}

fn hash(outcome: &Result<raft::Report, raft::Failure>) -> String {
    match outcome {
        Ok(report) => report.trace_hash.clone(),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn raft_same_seed_same_trace_for_20_seeds() {
    let options = raft::Options::default();
    let first = run_raft_seeds(0..20, &options);
    let second = run_raft_seeds(0..20, &options);
    for (seed, (a, b)) in first.iter().zip(&second).enumerate() {
        assert_eq!(hash(a), hash(b), "raft seed {seed} is not deterministic");
    }
    let distinct: std::collections::BTreeSet<String> = first.iter().map(hash).collect();
    assert_eq!(distinct.len(), 20, "different seeds gave the same trace");
}

#[test]
fn raft_500_seeds_pass_every_invariant() {
    let outcomes = run_raft_seeds(1_000..1_500, &raft::Options::default());
    let mut failures = Vec::new();
    let (mut crashes, mut power_failures, mut partitions, mut reads, mut leaders) = (0, 0, 0, 0, 0);
    let (mut lost_writes, mut dropped, mut duplicated) = (0, 0, 0);
    let mut disk = raft::DiskFaultStats::default();
    for outcome in &outcomes {
        match outcome {
            Ok(report) => {
                crashes += report.crashes;
                power_failures += report.power_failures;
                partitions += report.partitions;
                reads += report.reads_checked;
                leaders += report.leaders;
                lost_writes += report.unsynced_writes_lost;
                dropped += report.net.dropped;
                duplicated += report.net.duplicated;
                disk.bit_flips += report.disk.bit_flips;
                disk.corruptions_detected += report.disk.corruptions_detected;
                disk.fsync_errors += report.disk.fsync_errors;
                disk.wipes += report.disk.wipes;
                disk.repairs += report.disk.repairs;
            }
            Err(failure) => failures.push(format!(
                "{failure}\n  replay: cargo run -p trail-sim -- --replay {} --trace",
                failure.seed
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The faults the checkers guard against did happen.
    assert!(crashes > 2_000, "only {crashes} crashes");
    assert!(power_failures > 100, "only {power_failures} power failures");
    assert!(partitions > 500, "only {partitions} partitions");
    assert!(
        lost_writes > 1_000,
        "only {lost_writes} unsynced writes lost"
    );
    assert!(dropped > 10_000, "only {dropped} messages lost");
    assert!(duplicated > 1_000, "only {duplicated} messages duplicated");
    assert!(reads > 2_000, "only {reads} reads checked");
    assert!(leaders > 800, "only {leaders} leaderships");
    // Disk faults on restart: every flipped bit was caught by a scrub (the replica
    // refused to start), and every corrupt or wiped replica was repaired.
    println!("disk faults in 500 seeds: {disk:?}");
    assert!(disk.bit_flips > 50, "only {} bits flipped", disk.bit_flips);
    assert_eq!(disk.corruptions_detected, disk.bit_flips, "{disk:?}");
    assert!(
        disk.fsync_errors > 50,
        "only {} fsync errors",
        disk.fsync_errors
    );
    assert!(disk.wipes > 30, "only {} disks wiped", disk.wipes);
    assert_eq!(
        disk.repairs,
        disk.wipes + disk.corruptions_detected,
        "{disk:?}"
    );
}
