//! `cargo run -p trail-sim -- --seed N` runs one seed and prints its trace hash;
//! `--seeds A..B` runs many; `--replay N --trace` prints the trace of one.

use clap::Parser;
use trail_sim::{run, RunOptions};

#[derive(Parser)]
#[command(
    name = "trail-sim",
    about = "Deterministic simulation of Trail's ledger"
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "replay"])]
    seed: Option<u64>,
    /// Run a range of seeds, e.g. 0..1000.
    #[arg(long)]
    seeds: Option<String>,
    /// Run one seed again and print its trace (with --trace).
    #[arg(long)]
    replay: Option<u64>,
    /// Print every trace line.
    #[arg(long)]
    trace: bool,
    /// Proposal steps per run.
    #[arg(long, default_value_t = 200)]
    steps: usize,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let options = RunOptions {
        steps: args.steps,
        keep_trace: args.trace,
    };
    let seeds: Vec<u64> = match (&args.seeds, args.seed.or(args.replay)) {
        (Some(range), _) => match parse_range(range) {
            Some(range) => range.collect(),
            None => {
                eprintln!("--seeds: expected A..B, e.g. 0..1000");
                return std::process::ExitCode::from(2);
            }
        },
        (None, Some(seed)) => vec![seed],
        (None, None) => vec![0],
    };
    let mut failures = Vec::new();
    for seed in &seeds {
        let seed = *seed;
        let outcome = std::panic::catch_unwind(|| run(seed, options));
        match outcome {
            Ok(report) => {
                for line in &report.trace {
                    println!("{line}");
                }
                if seeds.len() == 1 {
                    println!(
                        "seed {seed}: ok, trace {} ({} trace events, {} events stored, {} duplicates sent, {} crashes)",
                        report.trace_hash, report.trace_events, report.events_stored, report.duplicates_sent, report.crashes
                    );
                }
            }
            Err(_) => failures.push(seed),
        }
    }
    if seeds.len() > 1 {
        println!("{} seeds, {} failed", seeds.len(), failures.len());
    }
    for seed in &failures {
        println!(
            "FAILED seed {seed}: replay with `cargo run -p trail-sim -- --replay {seed} --trace`"
        );
    }
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let (start, end) = text.split_once("..")?;
    Some(start.trim().parse().ok()?..end.trim().parse().ok()?)
}
