//! `trailctl`: ingest, read, inspect and benchmark a Trail node from the command line.
//!
//! Exit codes: 0 success; 1 something was rejected, not found or invalid; 2 the node
//! could not be reached.

mod bench;
mod ingest;
mod output;
mod read;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use trail_client::{Client, ClientOptions};

const EXAMPLES: &str = "\
Examples:
  # Load a workload file (see shared/workload/gen_events.py) into a local node
  trailctl ingest events.jsonl

  # Same, from a pipe, 1,000 events per batch, machine-readable summary
  python3 gen_events.py --count 10000 | trailctl ingest - --batch-size 1000 --json

  # Read one event back, then the newest ones of its tenant as they arrive
  trailctl get --tenant ten_0001 6f1c1d2e-8a4b-4c8e-9a53-0f6a7b1e2c3d
  trailctl tail --tenant ten_0001 --follow

  # Node and shard state, as a table or as JSON
  trailctl status
  trailctl --endpoint http://10.0.0.7:7400 status --json

  # Throughput and ack latency with 1 M generated events, 64 batches in flight
  trailctl bench ingest --count 1000000 --concurrency 64

Exit codes: 0 success; 1 rejected events, event not found or bad input;
2 the node could not be reached.";

/// Command-line client for Trail, the multi-tenant audit-log ledger.
#[derive(Debug, Parser)]
#[command(name = "trailctl", version, after_help = EXAMPLES)]
struct Cli {
    /// The node's gRPC address.
    #[arg(
        long,
        global = true,
        env = "TRAIL_ENDPOINT",
        default_value = "http://127.0.0.1:7400"
    )]
    endpoint: String,

    /// Deadline of each RPC attempt, in seconds; failed attempts are retried with
    /// backoff (10 attempts at most).
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    rpc_timeout_s: u64,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Record events from a JSON-lines file, in batches.
    ///
    /// Each line is one event in the workload shape (see shared/workload/README.md).
    /// Lines that do not parse are reported as `line N: reason` and skipped; the rest
    /// are still recorded. Events without an event_id get a UUID v4, so a retried
    /// batch is deduplicated by the server, never recorded twice.
    ///
    /// Prints `accepted: A  deduplicated: D  rejected: R  (N lines, T.Ts, E events/s)`.
    /// Exit code 0 when nothing was rejected, 1 otherwise, 2 if the node is unreachable.
    Ingest(ingest::IngestArgs),

    /// Print one event as pretty JSON.
    Get(read::GetArgs),

    /// Print a tenant's events in stream order as JSON lines.
    Tail(read::TailArgs),

    /// Show the node's identity, memory and per-shard consensus state.
    Status(read::StatusArgs),

    /// Measure the node.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Ingest throughput and per-batch ack latency.
    ///
    /// Events are generated (or read from --events) and encoded before the clock
    /// starts, then sent with --concurrency RecordBatch calls in flight. The report
    /// includes the node's peak RSS and, as a physical reference measured in the same
    /// run, the disk's rate of 4 KiB write + fdatasync in --fsync-dir.
    Ingest(BenchIngestArgs),
}

#[derive(Debug, Args)]
struct BenchIngestArgs {
    /// Generate this many events in-process (same distribution as gen_events.py).
    #[arg(long, default_value_t = 1_000_000, conflicts_with = "events",
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    count: u64,

    /// Seed of the generated workload.
    #[arg(long, default_value_t = 42)]
    seed: u64,

    /// Send the events of this workload JSON-lines file instead of generated ones.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,

    /// Keep the file's event_id values. By default every event gets a fresh UUID v4, so
    /// repeated runs record new events instead of measuring deduplication.
    #[arg(long, requires = "events")]
    keep_ids: bool,

    /// RecordBatch calls in flight at once.
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    concurrency: u32,

    /// Events per RecordBatch call.
    #[arg(long, default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,

    /// Directory for the fsync reference measurement; put it on the node's disk.
    #[arg(long, default_value = ".", value_name = "DIR")]
    fsync_dir: PathBuf,

    /// Print the results as one JSON object.
    #[arg(long)]
    json: bool,

    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let options = ClientOptions {
        rpc_timeout: Duration::from_secs(cli.rpc_timeout_s),
        ..ClientOptions::default()
    };
    let outcome = run(cli.command, &cli.endpoint, options).await;
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            exit_code_for(&error)
        }
    }
}

async fn run(command: Command, endpoint: &str, options: ClientOptions) -> anyhow::Result<ExitCode> {
    let client = Client::connect_with(endpoint, options).await?;
    match command {
        Command::Ingest(args) => ingest::run(&client, args).await,
        Command::Get(args) => read::get(&client, args).await,
        Command::Tail(args) => read::tail(&client, args).await,
        Command::Status(args) => read::status(&client, args).await,
        Command::Bench {
            bench: BenchCommand::Ingest(args),
        } => bench::run(&client, args).await,
    }
}

/// 2 when the node could not be reached, 1 for everything else.
fn exit_code_for(error: &anyhow::Error) -> ExitCode {
    for cause in error.chain() {
        if let Some(client_error) = cause.downcast_ref::<trail_client::Error>() {
            if client_error.is_connection_failure() {
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::from(1)
}
