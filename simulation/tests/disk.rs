//! The real-disk mode (`trail_sim::disk`): the node's own shard on fjall in temporary
//! directories, under crashes, crash points and network faults.
//!
//! - `disk_seeds_pass_every_invariant`: 50 seeds (`TRAIL_DISK_SEEDS=N` for more: the
//!   nightly size is 1,000);
//! - every planted storage bug (`storage/faults.rs`) is caught within 100 seeds.
//!
//! A seed spends most of its ~5 s waiting (timers, fsyncs), so seeds run four at a
//! time, each on a runtime of its own; a store's faults are its own, so runs in parallel
//! never share a planted bug or a crash point.
//!
//! Not deterministic (fjall's threads, the real clock): a failing seed prints its
//! replay command; most reproduce within a few runs.

use trail_node::storage::faults::StorageBug;
use trail_sim::disk::{run_seed, DiskOptions};

/// Seeds run at once.
const PARALLEL: u64 = 4;

/// Runs `seeds` in chunks of [`PARALLEL`], in order; stops after the first chunk with
/// a failure if `stop_at_failure`. Returns the failures `(seed, message, trace)`.
fn run_seeds(
    seeds: std::ops::Range<u64>,
    options: &DiskOptions,
    stop_at_failure: bool,
) -> Vec<(u64, String, Vec<String>)> {
    let mut failures = Vec::new();
    let mut start = seeds.start;
    while start < seeds.end {
        let chunk = start..(start + PARALLEL).min(seeds.end);
        start = chunk.end;
        let outcomes: Vec<_> = std::thread::scope(|scope| {
            let runs: Vec<_> = chunk
                .map(|seed| scope.spawn(move || (seed, run_seed(seed, options))))
                .collect();
            runs.into_iter()
                .map(|run| run.join().expect("a seed's thread"))
                .collect()
        });
        for (seed, outcome) in outcomes {
            if let Err((message, trace)) = outcome {
                failures.push((seed, message, trace));
            }
        }
        if stop_at_failure && !failures.is_empty() {
            break;
        }
    }
    failures
}

#[test]
fn disk_seeds_pass_every_invariant() {
    let seeds: u64 = std::env::var("TRAIL_DISK_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50);
    let failures = run_seeds(0..seeds, &DiskOptions::default(), false);
    let mut report = Vec::new();
    for (seed, message, trace) in &failures {
        eprintln!("seed {seed} FAILED: {message}");
        for line in trace.iter().rev().take(40).rev() {
            eprintln!("  {line}");
        }
        report.push(format!(
            "seed {seed}: {message} (replay: cargo run -p trail-sim -- --harness disk --replay {seed} --trace)"
        ));
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn every_planted_storage_bug_is_caught_within_100_seeds() {
    for bug in StorageBug::ALL {
        let options = DiskOptions {
            planted: Some(bug),
            ..DiskOptions::default()
        };
        match run_seeds(0..100, &options, true).first() {
            Some((seed, message, _trace)) => {
                eprintln!("{}: caught by seed {seed}: {message}", bug.name())
            }
            None => panic!("planted bug {} not caught in 100 seeds", bug.name()),
        }
    }
}
