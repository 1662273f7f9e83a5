//! `trailctl`: ingest, read, inspect, verify and benchmark a Trail node from the command
//! line.
//!
//! Exit codes: 0 success; 1 something was rejected, not found, invalid or did not
//! verify; 2 the node could not be reached.

mod api_key;
mod bench;
mod bench_query;
mod bench_verify;
mod checkpoint;
mod cluster;
mod credential;
mod export;
mod ingest;
mod key;
mod output;
mod proof;
mod query;
mod read;
mod verify;

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

  # Search a tenant's history: failed logins of the last day, then every page as JSON
  trailctl query --tenant ten_0001 --action 'auth.*' --result failure \
      --start-time 2025-01-01T00:00:00Z --end-time 2025-01-02T00:00:00Z
  trailctl query --tenant ten_0001 --actor-id usr_42 --all --json > usr_42.jsonl

  # Every call carries an API key's token: --token, --token-file, TRAIL_TOKEN or
  # TRAIL_TOKEN_FILE; where traild runs with no flags, ./trail-data/admin.token is used.
  # A read key for one tenant's portal (its token is printed once)
  trailctl api-key create --tenant ten_0001 --role read --name portal
  trailctl --token-file /var/lib/trail/admin.token api-key list

  # Node and shard state, as a table or as JSON
  trailctl status
  trailctl --endpoint http://10.0.0.7:7400 status --json

  # A cluster: list its nodes; calls fail over to the next when one is down
  trailctl --endpoint http://10.0.0.7:7400,http://10.0.0.8:7400 status

  # Throughput and ack latency with 1 M generated events, 64 calls of 20 in flight;
  # then a bulk load's throughput (500 events per call)
  trailctl bench ingest --count 1000000 --concurrency 64
  trailctl bench ingest --count 1000000 --concurrency 64 --batch-size 500

  # Tamper evidence (docs/PROOFS.md). Pin the node's verifier key first (check it out
  # of band: it is what every checkpoint must be signed with)
  export TRAIL_VERIFIER_KEY=$(trailctl status --json | jq -r .verifier_key)

  # Prove one event, save the proof, verify it later with no node at all
  trailctl proof --tenant ten_0001 evt_1 --out evt_1.proof.json
  trailctl proof --verify evt_1.proof.json

  # Keep a checkpoint now; later, check the node still extends it (no rollback, no fork)
  trailctl checkpoint --tenant ten_0001 --seal-now --out ten_0001.checkpoint
  trailctl verify --checkpoint ten_0001.checkpoint

  # Full audit: recompute every event, block and root of two tenants' streams
  trailctl verify --tenant ten_0001 --tenant ten_0002

  # Export March for an auditor, provably complete, and check it later with no node
  trailctl export --tenant ten_0001 --start-time 2025-03-01T00:00:00Z \
      --end-time 2025-04-01T00:00:00Z --out march.jsonl
  trailctl verify-export march.jsonl

Exit codes: 0 success; 1 rejected events, event not found, bad input, or a proof,
checkpoint or audit that does not verify; 2 the node could not be reached.";

/// Command-line client for Trail, the multi-tenant audit-log ledger.
#[derive(Debug, Parser)]
#[command(name = "trailctl", version, after_help = EXAMPLES)]
struct Cli {
    /// The node's gRPC address, or a cluster's nodes separated by commas (e.g.
    /// http://10.0.0.7:7400,http://10.0.0.8:7400; host:port means http://host:port).
    /// With several, the first reachable is used and calls fail over to the next when
    /// a node is down; a tenant's requests go straight to its shard's leader once a
    /// node has named it.
    #[arg(
        long,
        global = true,
        env = "TRAIL_ENDPOINT",
        default_value = "http://127.0.0.1:7400",
        value_name = "URI[,URI...]"
    )]
    endpoint: String,

    /// Deadline of each RPC attempt, in seconds; failed attempts are retried with
    /// backoff (10 attempts at most).
    #[arg(long, global = true, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    rpc_timeout_s: u64,

    #[command(flatten)]
    token: credential::TokenArgs,

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

    /// Show the node's identity, verifier key, memory and per-shard consensus state.
    ///
    /// In a cluster also the cluster map, and on each shard's leader every replica's
    /// lag in log entries (node:lag).
    Status(read::StatusArgs),

    /// Cluster administration: create the data shards of a cluster started with --peers.
    Cluster {
        #[command(subcommand)]
        cluster: cluster::ClusterCommand,
    },

    /// A local cluster for trying things out: start or stop N nodes on loopback ports.
    DevCluster {
        #[command(subcommand)]
        dev: cluster::DevClusterCommand,
    },

    /// Search a tenant's events by actor, action, resource, result, request and time.
    ///
    /// Prints a table (time, actor, action, resource, result, seq) or, with --json, one
    /// event per line in the workload's shape. Filters combine (all must match); an
    /// action filter is exact (auth.login) or a prefix (auth.* matches auth.login and
    /// auth.mfa.verify). Times are RFC 3339; --start-time is inclusive, --end-time
    /// exclusive, both on occurred_at.
    ///
    /// Results come by occurred_at (ties by stream position), newest first unless
    /// --order asc. One page holds at most --limit events; the command then prints on
    /// stderr the --cursor for the next page. --all follows the cursors to the end with
    /// a progress spinner on stderr. The node answers selective filters from its
    /// indexes; for broad ones it walks the tenant's events in time order and examines
    /// at most 100,000 per request, so such a page may come back short with a cursor:
    /// --all keeps going.
    ///
    /// Examples:
    ///   trailctl query --tenant ten_0001
    ///   trailctl query --tenant ten_0001 --action 'auth.*' --result failure --limit 200
    ///   trailctl query --tenant ten_0001 --resource-type document --resource-id doc_7 --all
    ///   trailctl query --tenant ten_0001 --start-time 2025-03-01T00:00:00Z \
    ///       --end-time 2025-03-08T00:00:00Z --order asc --all --json > week.jsonl
    ///   trailctl query --tenant ten_0001 --actor-id usr_42 --cursor <CURSOR>
    ///
    /// Exit code 0 (also when nothing matches); 1 a filter, limit or cursor was refused
    /// (the message names it); 2 the node could not be reached.
    #[command(verbatim_doc_comment)]
    Query(query::QueryArgs),
    /// Count a tenant's events matching filters (the same filters as `query`).
    ///
    /// Answered from the node's indexes, without reading the events; events recorded
    /// in the last second (not indexed yet) are counted from the store.
    ///
    /// Examples:
    ///   trailctl count --tenant ten_0001
    ///   trailctl count --tenant ten_0001 --action auth.login --result failure \
    ///       --start-time 2025-03-01T00:00:00Z --end-time 2025-03-08T00:00:00Z
    #[command(verbatim_doc_comment)]
    Count(query::CountArgs),

    /// Rebuild the node's query indexes from its store, and wait for it.
    ///
    /// The indexes (time order, filter terms) are derived from the stored events and
    /// are rebuilt online: queries keep working meanwhile, reading the events of a
    /// shard that is not done yet from the store (a shard with very many such events
    /// answers "index is being built, retry"). A node also rebuilds them by itself when
    /// their files are missing or damaged. Shows progress; Ctrl-C stops waiting, not
    /// the rebuild.
    Reindex(read::ReindexArgs),

    /// Prove that an event is in the ledger, or verify a saved proof offline.
    ///
    /// Fetches the event's inclusion proof (GetProof), packs it as a `trail-proof-v1`
    /// bundle (docs/PROOFS.md) and verifies it locally: the checkpoint's signature under
    /// the pinned key, the event bytes, the block header, the event's path to the
    /// block's merkle root and the block's path to the checkpoint's root. Prints a
    /// summary, or the bundle with --json; --out saves the bundle once it verified.
    ///
    /// `--verify FILE` checks a saved bundle with the pinned key alone, contacting no node.
    ///
    /// Examples:
    ///   trailctl proof --tenant ten_0001 evt_1
    ///   trailctl proof --tenant ten_0001 evt_1 --json --out evt_1.proof.json
    ///   trailctl proof --key "$KEY" --verify evt_1.proof.json
    ///
    /// Exit code 0 verified; 1 not found, or the proof does not verify (the first failed
    /// step is named); 2 the node could not be reached.
    #[command(verbatim_doc_comment)]
    Proof(proof::ProofArgs),

    /// Fetch a stream's signed checkpoint, verify its signature, print or save it.
    ///
    /// The checkpoint is a C2SP signed note: origin, tree size (blocks), stream tree
    /// root, last seq and seal time, signed by the node's key. It is printed verbatim,
    /// or saved with --out; a saved file is exactly the note, so keep it somewhere the
    /// node cannot reach and later run `trailctl verify --checkpoint FILE` to prove the
    /// node still extends it.
    ///
    /// Examples:
    ///   trailctl checkpoint --tenant ten_0001
    ///   trailctl checkpoint --tenant ten_0001 --seal-now --out ten_0001.checkpoint
    ///   trailctl checkpoint --tenant ten_0001 --size 42
    ///
    /// Exit code 0 verified; 1 the signature or the stream does not match; 2 the node
    /// could not be reached.
    #[command(verbatim_doc_comment)]
    Checkpoint(checkpoint::CheckpointArgs),

    /// Audit tenants' streams in full, or check a kept checkpoint against the node.
    ///
    /// Full audit (--tenant, repeatable): the node seals and signs a fresh checkpoint;
    /// its signature is checked; then every block is read with its events and
    /// recomputed from the bytes alone: each event decodes and holds the seq of its
    /// position (gap-free from 1), each block's merkle root, count, first seq and link
    /// to the previous block, and finally the stream tree root, seq and time, which must
    /// equal the checkpoint's. Prints
    ///   stream T/0: verified N events in B blocks, tree size S, root R (E events/s)
    /// or the first failure, by stream, block and seq.
    ///
    /// Kept checkpoint (--checkpoint FILE): checks the file's signature, fetches a fresh
    /// checkpoint and verifies the RFC 9162 consistency proof between the two: a store
    /// rolled back, or a history rewritten, fails. Add --full to run the full audit of
    /// that stream too, against the same fresh checkpoint.
    ///
    /// Examples:
    ///   trailctl verify --tenant ten_0001
    ///   trailctl verify --tenant ten_0001 --tenant ten_0002 --key-file node.pub
    ///   trailctl verify --checkpoint ten_0001.checkpoint
    ///   trailctl verify --checkpoint ten_0001.checkpoint --full
    ///
    /// Exit code 0 all verified; 1 anything failed (every tenant is still checked);
    /// 2 the node could not be reached.
    #[command(verbatim_doc_comment)]
    Verify(verify::VerifyArgs),

    /// Export a tenant's events to a file, with a proof bundle beside it.
    ///
    /// Writes one event per line (--format jsonl, the default) or per CSV row (--format
    /// csv), in seq order, each with every field of its canonical encoding and its leaf
    /// hash, to --out FILE, and the proof bundle (`trail-export-v1`, docs/PROOFS.md) to
    /// FILE.proof.jsonl. The node first seals and signs a fresh checkpoint, so every
    /// event recorded until then is covered; the files are checked as `verify-export`
    /// does before they are kept. Streams any number of events in constant memory, with
    /// a progress bar.
    ///
    /// Without filters, --start-time/--end-time select on ingested_at (when the ledger
    /// recorded the event; start inclusive, end exclusive, either may be left out), and
    /// the bundle proves the export COMPLETE: the events are one run of seqs, and the
    /// events just before and after it are proven to be outside the range.
    ///
    /// With a filter (--actor-id, --actor-type, --action, --resource-type,
    /// --resource-id, --result, --request-id), the node's query selects the events, and
    /// --start-time/--end-time select on occurred_at as in `trailctl query`. Each event
    /// is proven included; that no other event matches is not proven.
    ///
    /// Examples:
    ///   trailctl export --tenant ten_0001 --start-time 2025-03-01T00:00:00Z \
    ///       --end-time 2025-04-01T00:00:00Z --out march.jsonl
    ///   trailctl export --tenant ten_0001 --format csv --out all.csv
    ///   trailctl export --tenant ten_0001 --action 'auth.*' --result failure \
    ///       --key-file node.pub --out failed-logins.jsonl
    ///
    /// Exit code 0 written and verified; 1 bad input, or what the node served does not
    /// verify (nothing is kept); 2 the node could not be reached.
    #[command(verbatim_doc_comment)]
    Export(export::ExportArgs),

    /// Verify an export and its proof bundle offline, with a pinned key.
    ///
    /// Contacts no node. Checks, in order: the bundle's checkpoint signature under the
    /// pinned key (--key, --key-file or TRAIL_VERIFIER_KEY) and its stream; the
    /// selected range and its bound events; then, block by block, each line: its fields
    /// re-encoded canonically and hashed must give its leaf_hash, the line must be the one
    /// spelling of its fields, of the tenant, in seq order, inside the range (or
    /// matching the filter); the proven events and the block proof must give the
    /// block's merkle root; blocks must chain by prev_block_hash; finally the covering
    /// blocks and the tree proof must give the checkpoint's root. For a time range the
    /// lines must be every seq of the range, bounded by the events just outside it.
    /// Prints what is proven, or the first problem: export line and seq, or bundle line
    /// and block, and the check that failed.
    ///
    /// Examples:
    ///   trailctl verify-export march.jsonl --key-file node.pub
    ///   TRAIL_VERIFIER_KEY="$KEY" trailctl verify-export all.csv
    ///   trailctl verify-export copy.jsonl --bundle march.jsonl.proof.jsonl --key "$KEY"
    ///
    /// Exit code 0 verified; 1 anything failed or could not be read.
    #[command(verbatim_doc_comment)]
    VerifyExport(export::VerifyExportArgs),

    /// Manage API keys: create (the token is shown once), list, revoke. Needs an admin key.
    ///
    /// Every call to a node carries a key's token; the node's first admin key's token
    /// is in <data dir>/admin.token (see --token).
    ApiKey {
        #[command(subcommand)]
        api_key: api_key::ApiKeyCommand,
    },

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

    /// Full-audit speed: fetch a stream's blocks, then audit them in memory, beside
    /// plain SHA-256 over the same bytes (the floor) measured in the same run.
    Verify(bench_verify::BenchVerifyArgs),

    /// Query latency at the client: newest 50 of the tenant, of an actor, of a
    /// resource, of an action in 7 days, a deep keyset page of 200, a 7-day count,
    /// one at a time, beside a Status round trip measured in the same run.
    Query(bench_query::BenchQueryArgs),
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

    /// Events per RecordBatch call. The default, 20, is a producing service's call:
    /// the ack latency printed is what one of its requests waits. Larger calls load
    /// faster (500 gives 20-30% more events/s on 2 cores) but every event then waits for
    /// its whole call, and by Little's law, with `--concurrency` x this many events in
    /// flight, the mean latency is that count over the throughput: 64 x 500 at 90k/s
    /// is ~350 ms.
    #[arg(long, default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,

    /// Directory for the fsync reference measurement; put it on the node's disk.
    #[arg(long, default_value = ".", value_name = "DIR")]
    fsync_dir: PathBuf,

    /// Also write every batch's send time and ack latency to this CSV file, in send
    /// order (`sent_unix_ms,sent_ms,latency_ms,events`: the send time since the Unix
    /// epoch, to line up with the node's log, and since the start of the run): shows
    /// whether slow acks come in bursts (a stall) or spread out (queueing).
    #[arg(long, value_name = "FILE")]
    latency_log: Option<PathBuf>,

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
    let mut credential = None;
    let outcome = run(
        cli.command,
        &cli.endpoint,
        &cli.token,
        options,
        &mut credential,
    )
    .await;
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            if let Some(refused) = auth_failure(&error) {
                eprintln!("{}", credential::hint(refused, credential.as_ref()));
            }
            exit_code_for(&error)
        }
    }
}

/// Runs `command`. Commands that contact a node first take the token (see
/// [`credential`]) and leave it in `credential`, for the hint if the node refuses it.
async fn run(
    command: Command,
    endpoint: &str,
    token: &credential::TokenArgs,
    mut options: ClientOptions,
    credential: &mut Option<credential::Credential>,
) -> anyhow::Result<ExitCode> {
    // Offline verification must not contact the node, not even to connect.
    let command = match command {
        Command::Proof(args) if args.is_offline() => return proof::verify_offline(args),
        Command::VerifyExport(args) => return export::verify_offline(args),
        Command::DevCluster {
            dev: cluster::DevClusterCommand::Up(args),
        } => return cluster::up(&args).await,
        Command::DevCluster {
            dev: cluster::DevClusterCommand::Down(args),
        } => return cluster::down(&args),
        online => online,
    };
    *credential = credential::resolve(token)?;
    options.token = credential.as_ref().map(|given| given.token.clone());
    if let Command::Cluster {
        cluster: cluster::ClusterCommand::Init(args),
    } = &command
    {
        let timeout = options.rpc_timeout.max(Duration::from_secs(180));
        return cluster::init(endpoint, args, options.token.as_ref(), timeout).await;
    }
    if let Command::Verify(args) = &command {
        args.validate()?;
    }
    if let Command::Export(args) = &command {
        args.validate()?;
    }
    let client = Client::connect_with(endpoint, options).await?;
    match command {
        Command::Ingest(args) => ingest::run(&client, args).await,
        Command::Get(args) => read::get(&client, args).await,
        Command::Tail(args) => read::tail(&client, args).await,
        Command::Status(args) => read::status(&client, args).await,
        Command::Query(args) => query::run(&client, args).await,
        Command::Count(args) => query::count(&client, args).await,
        Command::Reindex(args) => read::reindex(&client, args).await,
        Command::Proof(args) => proof::run(&client, args).await,
        Command::Checkpoint(args) => checkpoint::run(&client, args).await,
        Command::Verify(args) => verify::run(&client, args).await,
        Command::Export(args) => export::run(&client, args).await,
        Command::ApiKey { api_key } => api_key::run(&client, api_key).await,
        Command::VerifyExport(_) => unreachable!("verify-export runs offline, above"),
        Command::Cluster { .. } | Command::DevCluster { .. } => {
            unreachable!("cluster commands connect on their own, above")
        }
        Command::Bench {
            bench: BenchCommand::Ingest(args),
        } => bench::run(&client, args).await,
        Command::Bench {
            bench: BenchCommand::Verify(args),
        } => bench_verify::run(&client, args).await,
        Command::Bench {
            bench: BenchCommand::Query(args),
        } => bench_query::run(&client, args).await,
    }
}

/// The node's refusal of the credential or of the key's rights, if that is the error.
fn auth_failure(error: &anyhow::Error) -> Option<&trail_client::Error> {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<trail_client::Error>())
        .find(|client_error| client_error.is_auth_failure())
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
