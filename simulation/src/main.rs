//! `cargo run -p trail-sim -- --seed N` runs one seed and prints its trace hash;
//! `--seeds A..B` runs many in parallel; `--replay N --trace` prints the trace of one.
//! `--harness raft` (the default) runs openraft groups with the ledger under faults;
//! `--harness turmoil` runs them on three simulated hosts talking tonic gRPC over
//! turmoil's TCP; `--harness ledger` runs the ledger-level model without Raft;
//! `--harness disk` runs the node's own shards on fjall in temporary directories.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::{Parser, ValueEnum};
use trail_node::storage::faults::StorageBug;
use trail_sim::disk;
use trail_sim::raft::{self, PlantedBug};
use trail_sim::turmoil;
use trail_sim::{run, RunOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Harness {
    /// openraft groups (the node's Raft types over in-memory stores) with the ledger.
    Raft,
    /// Three simulated hosts, each a replica of two openraft groups, talking real
    /// tonic gRPC over turmoil's simulated TCP.
    Turmoil,
    /// The ledger apply code on three replicas, without Raft.
    Ledger,
    /// The node's own shard (openraft over node/src/storage on fjall, batcher, sealer,
    /// peer network) on three replicas in temporary directories, with process crashes
    /// (not deterministic: fjall has threads of its own).
    Disk,
}

#[derive(Parser)]
#[command(
    name = "trail-sim",
    about = "Deterministic simulation of Trail: one seed, one run, one trace hash"
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with_all = ["seeds", "replay"])]
    seed: Option<u64>,
    /// Run a range of seeds in parallel, e.g. 0..1000.
    #[arg(long)]
    seeds: Option<String>,
    /// Run one seed again (with --trace: print its trace).
    #[arg(long)]
    replay: Option<u64>,
    /// Print every trace line.
    #[arg(long)]
    trace: bool,
    /// Which harness runs.
    #[arg(long, value_enum, default_value_t = Harness::Raft)]
    harness: Harness,
    /// Plant a bug the checkers must catch. Raft harness: ack-before-fsync,
    /// apply-twice-after-restart, skip-seq, seal-order, stale-read, skip-checksum,
    /// fsync-error-ignored, wipe-in-place. Disk harness (in the node's storage code):
    /// clear-dedup-on-install, install-skips-marker, overlay-not-rebuilt-at-open.
    #[arg(long, value_name = "NAME")]
    planted_bug: Option<String>,
    /// Raft harness: length of the safety phase in virtual ms (default: the seed's).
    #[arg(long)]
    safety_ms: Option<u64>,
    /// Raft harness: reads wait for openraft's read log id only (not linearizable
    /// after a leader restart; seed 495 shows it).
    #[arg(long)]
    openraft_read_index: bool,
    /// Raft harness: the log reader returns gapped ranges, as the node's fjall log
    /// store does (a stale replication stream then breaks a follower's log; seed 28399).
    #[arg(long)]
    gapped_log_reads: bool,
    /// Raft harness: the log store purges as soon as openraft asks, before the state
    /// machine has installed the snapshot that covers it (seed 11974).
    #[arg(long)]
    eager_purge: bool,
    /// Raft harness: a snapshot install is two journal changes (state, then snapshot
    /// pointer), as the node writes them; a crash between them breaks the restart
    /// (seed 11974).
    #[arg(long)]
    split_install: bool,
    /// Raft harness: no disk faults (bit flips, fsync errors, wipes), so a seed runs as
    /// it did before they existed (how the older seeds of tests/regressions.rs replay).
    #[arg(long)]
    no_disk_faults: bool,
    /// Ledger harness: proposal steps per run.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Threads for --seeds (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// With --seeds: stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// With --seeds: print every seed's outcome and trace hash.
    #[arg(long)]
    verbose: bool,
}

enum Outcome {
    Passed { summary: String, trace: Vec<String> },
    Failed { message: String, trace: Vec<String> },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let storage_bug = match (args.harness, args.planted_bug.as_deref()) {
        (Harness::Disk, Some(name)) => match StorageBug::parse(name) {
            Some(bug) => Some(bug),
            None => {
                let names: Vec<&str> = StorageBug::ALL.iter().map(|bug| bug.name()).collect();
                eprintln!(
                    "--planted-bug: unknown storage bug {name:?}; one of {}",
                    names.join(", ")
                );
                return std::process::ExitCode::from(2);
            }
        },
        _ => None,
    };
    let planted = match args
        .planted_bug
        .as_deref()
        .filter(|_| args.harness != Harness::Disk)
    {
        None => None,
        Some(name) => match PlantedBug::parse(name) {
            Some(bug) => Some(bug),
            None => {
                let names: Vec<&str> = PlantedBug::ALL.iter().map(|bug| bug.name()).collect();
                eprintln!(
                    "--planted-bug: unknown bug {name:?}; one of {}",
                    names.join(", ")
                );
                return std::process::ExitCode::from(2);
            }
        },
    };
    if planted.is_some() && args.harness != Harness::Raft {
        eprintln!("--planted-bug needs --harness raft");
        return std::process::ExitCode::from(2);
    }
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
    let many = seeds.len() > 1;
    if many {
        quiet_panics();
    }
    let run_one = |seed: u64| -> Outcome {
        match args.harness {
            Harness::Ledger => {
                let options = RunOptions {
                    steps: args.steps,
                    keep_trace: args.trace,
                };
                match std::panic::catch_unwind(|| run(seed, options)) {
                    Ok(report) => Outcome::Passed {
                        summary: format!(
                            "trace {} ({} trace events, {} events stored, {} duplicates sent, {} crashes)",
                            report.trace_hash,
                            report.trace_events,
                            report.events_stored,
                            report.duplicates_sent,
                            report.crashes
                        ),
                        trace: report.trace,
                    },
                    Err(panic) => Outcome::Failed {
                        message: panic_message(&panic),
                        trace: Vec::new(),
                    },
                }
            }
            Harness::Disk => {
                let options = disk::DiskOptions {
                    safety_ms: args.safety_ms,
                    keep_trace: args.trace,
                    planted: storage_bug,
                };
                match std::panic::catch_unwind(|| disk::run_seed(seed, &options)) {
                    Ok(Ok(summary)) => Outcome::Passed {
                        summary,
                        trace: Vec::new(),
                    },
                    Ok(Err((message, trace))) => Outcome::Failed {
                        message: format!("seed {seed}: {message}"),
                        trace,
                    },
                    Err(panic) => Outcome::Failed {
                        message: format!("seed {seed}: panicked: {}", panic_message(&panic)),
                        trace: Vec::new(),
                    },
                }
            }
            Harness::Turmoil => {
                let options = turmoil::Options {
                    keep_trace: args.trace,
                };
                match std::panic::catch_unwind(|| turmoil::run(seed, &options)) {
                    Ok(Ok(report)) => Outcome::Passed {
                        summary: format!(
                            "trace {} ({} trace events, {} ms virtual, {} events, {} crashes, \
                             {} bounces, {} partitions, {} holds, {} reads checked, \
                             {} leaders, {} misrouted messages refused)",
                            report.trace_hash,
                            report.trace_events,
                            report.virtual_ms,
                            report.events_sent,
                            report.crashes,
                            report.bounces,
                            report.partitions,
                            report.holds,
                            report.reads_checked,
                            report.leaders,
                            report.misroutes_refused,
                        ),
                        trace: report.trace,
                    },
                    Ok(Err(failure)) => Outcome::Failed {
                        message: failure.to_string(),
                        trace: failure.trace,
                    },
                    Err(panic) => Outcome::Failed {
                        message: format!("seed {seed}: panicked: {}", panic_message(&panic)),
                        trace: Vec::new(),
                    },
                }
            }
            Harness::Raft => {
                let options = raft::Options {
                    keep_trace: args.trace,
                    planted,
                    safety_ms: args.safety_ms,
                    openraft_read_index: args.openraft_read_index,
                    gapped_log_reads: args.gapped_log_reads,
                    eager_purge: args.eager_purge,
                    split_install: args.split_install,
                    no_disk_faults: args.no_disk_faults,
                };
                match std::panic::catch_unwind(|| raft::run(seed, &options)) {
                    Ok(Ok(report)) => Outcome::Passed {
                        summary: format!(
                            "trace {} ({} trace events, {} replicas, {} ms virtual, {} events, \
                             {} crashes, {} power failures, {} partitions, {} reads checked, \
                             {} leaders, {} rpcs, {} lost, {} duplicated, {} fsyncs, \
                             {} unsynced writes lost in crashes, {} bits flipped, \
                             {} corrupt disks refused, {} fsync errors, {} disks wiped, \
                             {} repairs)",
                            report.trace_hash,
                            report.trace_events,
                            report.replicas,
                            report.virtual_ms,
                            report.events_sent,
                            report.crashes,
                            report.power_failures,
                            report.partitions,
                            report.reads_checked,
                            report.leaders,
                            report.net.sent,
                            report.net.dropped,
                            report.net.duplicated,
                            report.fsyncs,
                            report.unsynced_writes_lost,
                            report.disk.bit_flips,
                            report.disk.corruptions_detected,
                            report.disk.fsync_errors,
                            report.disk.wipes,
                            report.disk.repairs,
                        ),
                        trace: report.trace,
                    },
                    Ok(Err(failure)) => Outcome::Failed {
                        message: failure.to_string(),
                        trace: failure.trace,
                    },
                    Err(panic) => Outcome::Failed {
                        message: format!("seed {seed}: panicked: {}", panic_message(&panic)),
                        trace: Vec::new(),
                    },
                }
            }
        }
    };

    let replay = |seed: u64| {
        let mut command = format!("cargo run --release -p trail-sim -- --replay {seed}");
        if args.harness == Harness::Turmoil {
            command.push_str(" --harness turmoil");
        }
        if args.harness == Harness::Disk {
            command.push_str(" --harness disk");
        }
        if args.harness == Harness::Ledger {
            command.push_str(" --harness ledger");
            if args.steps != 200 {
                command.push_str(&format!(" --steps {}", args.steps));
            }
        }
        if let Some(bug) = planted {
            command.push_str(&format!(" --planted-bug {}", bug.name()));
        }
        if let Some(bug) = storage_bug {
            command.push_str(&format!(" --planted-bug {}", bug.name()));
        }
        if args.openraft_read_index {
            command.push_str(" --openraft-read-index");
        }
        if args.gapped_log_reads {
            command.push_str(" --gapped-log-reads");
        }
        if args.eager_purge {
            command.push_str(" --eager-purge");
        }
        if args.split_install {
            command.push_str(" --split-install");
        }
        if args.no_disk_faults {
            command.push_str(" --no-disk-faults");
        }
        if let Some(ms) = args.safety_ms {
            command.push_str(&format!(" --safety-ms {ms}"));
        }
        command.push_str(" --trace");
        command
    };

    if !many {
        let seed = seeds[0];
        return match run_one(seed) {
            Outcome::Passed { summary, trace } => {
                for line in trace {
                    println!("{line}");
                }
                println!("seed {seed}: ok, {summary}");
                std::process::ExitCode::SUCCESS
            }
            Outcome::Failed { message, trace } => {
                for line in trace {
                    println!("{line}");
                }
                println!("FAILED {message}");
                println!("replay with `{}`", replay(seed));
                std::process::ExitCode::from(1)
            }
        };
    }

    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|count| count.get())
                .unwrap_or(1)
        })
        .max(1);
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failures: Arc<Mutex<Vec<(u64, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let done = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let index = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(seed) = seeds.get(index).copied() else {
                    return;
                };
                match run_one(seed) {
                    Outcome::Passed { summary, .. } => {
                        if args.verbose {
                            println!("seed {seed}: ok, {summary}");
                        }
                    }
                    Outcome::Failed { message, .. } => {
                        if args.verbose {
                            println!("FAILED {message}");
                        }
                        failures
                            .lock()
                            .expect("failures lock")
                            .push((seed, message));
                        if args.fail_fast {
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let ran = done.load(Ordering::SeqCst);
    let mut failures = failures.lock().expect("failures lock").clone();
    failures.sort();
    println!(
        "{ran} seeds, {} failed, {elapsed:.1} s on {threads} threads ({:.1} seeds/s)",
        failures.len(),
        ran as f64 / elapsed.max(1e-9)
    );
    for (seed, message) in &failures {
        println!("FAILED {message}");
        println!("  replay with `{}`", replay(*seed));
    }
    if failures.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

/// With many seeds, a panic (a seed's harness thread, or a Raft task of a seed with a
/// planted bug) prints one line, not a backtrace each.
fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|location| format!(" at {}:{}", location.file(), location.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|text| text.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("panic: {message}{location}");
    }));
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let (start, end) = text.split_once("..")?;
    Some(start.trim().parse().ok()?..end.trim().parse().ok()?)
}
