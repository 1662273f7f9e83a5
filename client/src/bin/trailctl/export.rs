//! `trailctl export`: a tenant's events to a JSON-lines or CSV file with a proof bundle
//! beside it; `trailctl verify-export`: checks the two offline (docs/PROOFS.md,
//! "Exports").
//!
//! The export seals and signs a fresh checkpoint first, so every event recorded until
//! then is covered. A time range without other filters is found by binary search on
//! `ingested_at` over the stream (`Tail` of one event: about 2 log2(events) calls); a
//! filtered export pages the node's query and keeps the seqs found. Then it reads every
//! block header of the stream (`ListBlocks` without events, ~150 bytes per block), and
//! the events of the blocks that hold exported events (`GetBlock`, a few in flight), and
//! writes the records in seq order as they arrive. Memory stays constant: one block's
//! events per fetch in flight, and for a filter the set of seqs (at most 1 bit per event
//! of the stream).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use chrono::DateTime;
use clap::{Args, ValueEnum};
use futures::StreamExt;
use tokio::task::JoinHandle;
use trail_client::block::BlockHeader;
use trail_client::checkpoint::{format_time, Checkpoint};
use trail_client::export::record::{actor_type_name, result_name};
use trail_client::export::{
    assemble_bundle, verify_export, BundleHead, Completeness, ExportBuilder, ExportFilter,
    ExportPlan, ExportSummary, FileFormat, SeqSet, BUNDLE_SUFFIX,
};
use trail_client::note::VerifierKey;
use trail_client::Client;
use trail_proto::v1::{ActorType, QueryFilter, QueryOrder, QueryRequest, Result as EventResult};
use trail_proto::Timestamp;

use crate::key::{KeyArgs, KeyOrigin};
use crate::output::{group_thousands, human_bytes, print_line, progress_bar};
use crate::query::{ActorTypeArg, ResultArg};

/// Block fetches (`GetBlock` with events) in flight while writing: each is one block,
/// ~0.6 MiB at 1,024 events, so memory stays a few MiB while the round trips overlap.
const BLOCK_FETCHES_IN_FLIGHT_MAX: usize = 4;

/// Events per query page of a filtered export (the node's maximum).
const QUERY_PAGE_EVENTS: u32 = 1_000;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row (RFC 4180 quoting, `\n` line ends); a cell starting with
    /// = + - @ or ' gets a ' in front, so spreadsheets show it as text.
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The tenant whose events to export.
    #[arg(long)]
    tenant: String,

    /// Only events of this actor (exact actor.id). Makes the export a filtered one.
    #[arg(long, value_name = "ID")]
    actor_id: Option<String>,

    /// Only events of this kind of actor. Makes the export a filtered one.
    #[arg(long, value_enum, ignore_case = true)]
    actor_type: Option<ActorTypeArg>,

    /// Only this action (auth.login) or the actions under a prefix (auth.* matches
    /// auth.login and auth.mfa.verify, not authz.check). Makes the export a filtered one.
    #[arg(long)]
    action: Option<String>,

    /// Only events on resources of this type. Makes the export a filtered one.
    #[arg(long, value_name = "TYPE")]
    resource_type: Option<String>,

    /// Only events on the resource with this id. Makes the export a filtered one.
    #[arg(long, value_name = "ID")]
    resource_id: Option<String>,

    /// Only events with this result. Makes the export a filtered one.
    #[arg(long, value_enum, ignore_case = true)]
    result: Option<ResultArg>,

    /// Only events of this request. Makes the export a filtered one.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,

    /// Start of the range, inclusive (RFC 3339, e.g. 2025-03-01T00:00:00Z). Without
    /// other filters it bounds ingested_at (when the ledger recorded the event); with
    /// filters it bounds occurred_at, as `trailctl query` does.
    #[arg(long, value_name = "TIME", value_parser = parse_time_ns)]
    start_time: Option<i64>,

    /// End of the range, exclusive (RFC 3339). Same field as --start-time.
    #[arg(long, value_name = "TIME", value_parser = parse_time_ns)]
    end_time: Option<i64>,

    /// Format of the records file.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: FormatArg,

    /// The records file to write. The proof bundle goes beside it, as FILE.proof.jsonl.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,

    /// Replace FILE and its bundle if they exist.
    #[arg(long)]
    force: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,

    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct VerifyExportArgs {
    /// The records file of an export (`trailctl export --out FILE`).
    file: PathBuf,

    /// The proof bundle; by default FILE.proof.jsonl.
    #[arg(long, value_name = "BUNDLE")]
    bundle: Option<PathBuf>,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,

    #[command(flatten)]
    key: KeyArgs,
}

fn parse_time_ns(text: &str) -> Result<i64, String> {
    let time = DateTime::parse_from_rfc3339(text).map_err(|_| {
        format!(
            "{text:?} is not an RFC 3339 time; use e.g. 2025-01-01T00:00:00Z or \
             2025-01-01T09:30:00.5+01:00"
        )
    })?;
    time.timestamp_nanos_opt()
        .ok_or_else(|| format!("{text:?} is outside the years 1677 to 2262"))
}

fn timestamp(time_ns: i64) -> Timestamp {
    Timestamp {
        seconds: time_ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(time_ns.rem_euclid(1_000_000_000)).expect("below 1e9"),
    }
}

/// The bundle path beside a records file.
fn bundle_path(records: &Path) -> PathBuf {
    let mut name = records.as_os_str().to_os_string();
    name.push(BUNDLE_SUFFIX);
    PathBuf::from(name)
}

/// A hidden temporary file beside `path`, renamed over it once complete.
fn temporary_path(path: &Path, purpose: &str) -> anyhow::Result<PathBuf> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let mut name = std::ffi::OsString::from(".");
    name.push(file_name);
    name.push(format!(".{purpose}-{}", std::process::id()));
    Ok(path.with_file_name(name))
}

impl ExportArgs {
    /// Checks the flags before any connection.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let (Some(start), Some(end)) = (self.start_time, self.end_time) {
            if end <= start {
                anyhow::bail!(
                    "--end-time must be after --start-time (start inclusive, end exclusive)"
                );
            }
        }
        if let Some(action) = &self.action {
            if action.is_empty() {
                anyhow::bail!("--action: empty; give an action (auth.login) or a prefix (auth.*)");
            }
        }
        let bundle = bundle_path(&self.out);
        if !self.force {
            for path in [&self.out, &bundle] {
                if path.exists() {
                    anyhow::bail!(
                        "{} exists; pass --force to replace it, or choose another --out",
                        path.display()
                    );
                }
            }
        }
        Ok(())
    }

    /// The filter as the bundle records it; empty for a plain time range.
    fn export_filter(&self) -> ExportFilter {
        let filter = ExportFilter {
            actor_id: self.actor_id.clone(),
            actor_type: self.actor_type.map(|kind| {
                actor_type_name(match kind {
                    ActorTypeArg::User => trail_client::event::ActorType::User,
                    ActorTypeArg::Service => trail_client::event::ActorType::Service,
                    ActorTypeArg::System => trail_client::event::ActorType::System,
                })
                .to_string()
            }),
            action: self.action.clone(),
            resource_type: self.resource_type.clone(),
            resource_id: self.resource_id.clone(),
            result: self.result.map(|result| {
                result_name(match result {
                    ResultArg::Success => trail_client::event::EventResult::Success,
                    ResultArg::Failure => trail_client::event::EventResult::Failure,
                    ResultArg::Denied => trail_client::event::EventResult::Denied,
                })
                .to_string()
            }),
            request_id: self.request_id.clone(),
            occurred_at_start: None,
            occurred_at_end: None,
        };
        if filter.is_empty() {
            return filter;
        }
        ExportFilter {
            occurred_at_start: self.start_time.map(format_time),
            occurred_at_end: self.end_time.map(format_time),
            ..filter
        }
    }

    fn query_filter(&self) -> QueryFilter {
        QueryFilter {
            actor_id: self.actor_id.clone().unwrap_or_default(),
            actor_type: match self.actor_type {
                None => ActorType::Unspecified,
                Some(ActorTypeArg::User) => ActorType::User,
                Some(ActorTypeArg::Service) => ActorType::Service,
                Some(ActorTypeArg::System) => ActorType::System,
            } as i32,
            action: self.action.clone().unwrap_or_default(),
            resource_type: self.resource_type.clone().unwrap_or_default(),
            resource_id: self.resource_id.clone().unwrap_or_default(),
            result: match self.result {
                None => EventResult::Unspecified,
                Some(ResultArg::Success) => EventResult::Success,
                Some(ResultArg::Failure) => EventResult::Failure,
                Some(ResultArg::Denied) => EventResult::Denied,
            } as i32,
            request_id: self.request_id.clone().unwrap_or_default(),
            start_time: self.start_time.map(timestamp),
            end_time: self.end_time.map(timestamp),
        }
    }
}

/// `ingested_at` of one event, by seq (`Tail` after the seq before it, one event).
async fn ingested_at_of(client: &Client, tenant: &str, seq: u64) -> anyhow::Result<i64> {
    let page = client.tail(tenant, seq - 1, 1).await?;
    let event = page
        .events
        .first()
        .filter(|event| event.seq == seq)
        .with_context(|| format!("the node did not return seq {seq} of tenant {tenant}"))?;
    let time = event
        .ingested_at
        .as_ref()
        .with_context(|| format!("seq {seq} has no ingested_at"))?;
    Ok(time.seconds * 1_000_000_000 + i64::from(time.nanos))
}

/// The first seq of `from ..= last_seq` ingested at or after `time_ns` (`last_seq + 1`
/// when none is): a binary search, since `ingested_at` never decreases along a stream.
async fn first_seq_from(
    client: &Client,
    tenant: &str,
    from: u64,
    last_seq: u64,
    time_ns: i64,
) -> anyhow::Result<u64> {
    let (mut low, mut high) = (from, last_seq + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        if ingested_at_of(client, tenant, middle).await? >= time_ns {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}

/// The seqs (at most `last_seq`) of every page of the filtered query.
async fn query_seqs(
    client: &Client,
    args: &ExportArgs,
    stream: &str,
    last_seq: u64,
    quiet: bool,
) -> anyhow::Result<SeqSet> {
    let bar = progress_bar(None, "{spinner} {elapsed_precise} {msg}", quiet);
    let mut request = QueryRequest {
        tenant_id: args.tenant.clone(),
        filter: Some(args.query_filter()),
        limit: QUERY_PAGE_EVENTS,
        cursor: String::new(),
        order: QueryOrder::OldestFirst as i32,
        ..QueryRequest::default()
    };
    let mut seqs = SeqSet::new();
    let mut later: u64 = 0;
    loop {
        let page = client.query(request.clone()).await?;
        for stored in &page.events {
            if stored.stream != stream {
                bar.finish_and_clear();
                anyhow::bail!(
                    "the query returned an event of stream {}, not {stream}: exports cover one \
                     stream",
                    stored.stream
                );
            }
            // Recorded after the checkpoint (this query's own read record among them):
            // not covered by it, so not in this export.
            if stored.seq > last_seq {
                later += 1;
                continue;
            }
            seqs.insert(stored.seq);
        }
        bar.set_message(format!(
            "query: {} matching events found",
            group_thousands(seqs.len())
        ));
        if page.next_cursor.is_empty() {
            break;
        }
        request.cursor = page.next_cursor;
    }
    bar.finish_and_clear();
    if later > 0 {
        eprintln!(
            "note: {} matching events were recorded after the checkpoint and are left out",
            group_thousands(later)
        );
    }
    Ok(seqs)
}

/// A block's events being fetched, or none needed.
type Fetch = Option<JoinHandle<trail_client::Result<trail_client::Block>>>;

pub async fn run(client: &Client, args: ExportArgs) -> anyhow::Result<ExitCode> {
    args.validate()?;
    let (key, origin) = args.key.resolve(client).await?;
    let started = Instant::now();
    let tenant = args.tenant.as_str();
    let stream = format!("{tenant}/0");

    // The export is recorded in the tenant's log first (audit_log.export), so the fresh
    // checkpoint below covers its own record.
    let format_name = match args.format {
        FormatArg::Jsonl => "jsonl",
        FormatArg::Csv => "csv",
    };
    let recorded = client
        .record_export(tenant, args.query_filter(), format_name)
        .await?;

    // Everything recorded until now gets covered by a fresh signed checkpoint.
    let response = client.get_checkpoint(tenant, 0, 0, true).await?;
    let note = response
        .checkpoint
        .map(|checkpoint| checkpoint.note)
        .unwrap_or_default();
    let checkpoint = match Checkpoint::from_note(&note, &key) {
        Ok(checkpoint) => checkpoint,
        Err(error) => {
            eprintln!("error: the node's checkpoint of {stream}: {error}");
            return Ok(ExitCode::from(1));
        }
    };
    if checkpoint.stream != stream {
        eprintln!(
            "error: the node answered with a checkpoint of stream {}, not {stream}",
            checkpoint.stream
        );
        return Ok(ExitCode::from(1));
    }

    let filter = args.export_filter();
    let plan = if filter.is_empty() {
        let bar = progress_bar(None, "{spinner} {elapsed_precise} {msg}", args.quiet);
        bar.set_message("finding the range's seqs");
        let last = checkpoint.last_seq;
        let first_seq = match args.start_time {
            Some(start) => first_seq_from(client, tenant, 1, last, start).await?,
            None => 1,
        };
        // The end is after the start, so its seq is not before the first.
        let end_seq = match args.end_time {
            Some(end) => first_seq_from(client, tenant, first_seq, last, end).await?,
            None => last + 1,
        };
        bar.finish_and_clear();
        ExportPlan::TimeRange {
            start_ns: args.start_time,
            end_ns: args.end_time,
            first_seq,
            last_seq: end_seq.max(first_seq) - 1,
        }
    } else {
        let seqs = query_seqs(client, &args, &stream, checkpoint.last_seq, args.quiet).await?;
        ExportPlan::Filter { filter, seqs }
    };

    let format = match args.format {
        FormatArg::Jsonl => FileFormat::Jsonl,
        FormatArg::Csv => FileFormat::Csv,
    };
    let records_path = args.out.clone();
    let bundle_path = bundle_path(&records_path);
    let records_temporary = temporary_path(&records_path, "tmp")?;
    let blocks_temporary = temporary_path(&bundle_path, "blocks-tmp")?;
    let bundle_temporary = temporary_path(&bundle_path, "tmp")?;
    let temporaries = [&records_temporary, &blocks_temporary, &bundle_temporary];
    let written = write_export(
        client,
        &args,
        format,
        plan,
        checkpoint.clone(),
        &note,
        &records_temporary,
        &blocks_temporary,
        &bundle_temporary,
    )
    .await;
    let head = match written {
        Ok(Ok(head)) => head,
        Ok(Err(problem)) => {
            remove_all(&temporaries);
            eprintln!("error: {problem}");
            return Ok(ExitCode::from(1));
        }
        Err(error) => {
            remove_all(&temporaries);
            return Err(error);
        }
    };
    let _ = fs::remove_file(&blocks_temporary);
    let exported_s = started.elapsed().as_secs_f64();

    // Check the files as an auditor will, before they take the final names. Seconds of
    // hashing: off the async workers.
    let verify_started = Instant::now();
    let verified = tokio::task::block_in_place(|| {
        verify_files(
            &records_temporary,
            &bundle_temporary,
            &key,
            args.quiet,
            Some(head.events),
        )
    });
    let verify_s = verify_started.elapsed().as_secs_f64();
    let summary = match verified {
        Ok(Ok(summary)) => summary,
        Ok(Err(problem)) => {
            remove_all(&temporaries);
            eprintln!("error: the export does not verify, so it was not kept: {problem}");
            return Ok(ExitCode::from(1));
        }
        Err(error) => {
            remove_all(&temporaries);
            return Err(error);
        }
    };
    fs::rename(&records_temporary, &records_path)
        .with_context(|| format!("cannot rename the records to {}", records_path.display()))?;
    fs::rename(&bundle_temporary, &bundle_path)
        .with_context(|| format!("cannot rename the bundle to {}", bundle_path.display()))?;

    let bundle_bytes = fs::metadata(&bundle_path)
        .map(|metadata| metadata.len())
        .unwrap_or(0);
    let rate = head.events as f64 / exported_s.max(1e-9);
    let mut lines = vec![
        format!(
            "exported  {} events of tenant {tenant} to {} in {exported_s:.1}s ({} events/s)",
            group_thousands(head.events),
            records_path.display(),
            group_thousands(rate as u64)
        ),
        format!(
            "bundle    {} ({}, {} covering blocks of {})",
            bundle_path.display(),
            human_bytes(bundle_bytes),
            group_thousands(head.blocks),
            group_thousands(checkpoint.tree_size)
        ),
    ];
    lines.extend(summary_lines(&summary, &key, origin));
    if let Some(receipt) = &recorded {
        lines.push(format!(
            "recorded  as audit_log.export {} at {} seq {}",
            receipt.event_id, receipt.stream, receipt.seq
        ));
    }
    lines.push(format!(
        "checked   in {verify_s:.1}s, as `trailctl verify-export` does"
    ));
    // A closed stdout (`| head`) loses nothing: the files are written and verified.
    let _ = print_line(&lines.join("\n"));
    Ok(ExitCode::SUCCESS)
}

fn remove_all(paths: &[&PathBuf]) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

/// Writes the records and the bundle. `Ok(Err(problem))`: what the node served does not
/// hold together (exit 1); `Err`: I/O or RPC failure.
#[allow(clippy::too_many_arguments)]
async fn write_export(
    client: &Client,
    args: &ExportArgs,
    format: FileFormat,
    plan: ExportPlan,
    checkpoint: Checkpoint,
    note: &str,
    records_path: &Path,
    blocks_path: &Path,
    bundle_path: &Path,
) -> anyhow::Result<Result<BundleHead, String>> {
    let tenant = args.tenant.as_str();
    let tree_size = checkpoint.tree_size;
    let records = BufWriter::new(
        File::create(records_path)
            .with_context(|| format!("cannot create {}", records_path.display()))?,
    );
    let block_lines = BufWriter::new(
        File::create(blocks_path)
            .with_context(|| format!("cannot create {}", blocks_path.display()))?,
    );
    let mut builder = match ExportBuilder::new(format, plan, checkpoint, note, records, block_lines)
    {
        Ok(builder) => builder,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let bar = progress_bar(
        Some(builder.events_expected()),
        "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events ({per_sec}) {msg}",
        args.quiet,
    );
    // Every block header of the checkpoint's tree, in order; the events of the blocks
    // that hold exported seqs fetched a few at a time ahead of the writer.
    // A tree of no block has nothing to list (and to_block 0 would mean "all of them").
    let mut headers = if tree_size > 0 {
        Some(client.list_blocks(tenant, 0, 0, tree_size, false).await?)
    } else {
        None
    };
    let mut queue: VecDeque<(Vec<u8>, Fetch)> = VecDeque::new();
    let mut listed_all = headers.is_none();
    loop {
        while !listed_all && queue.len() < BLOCK_FETCHES_IN_FLIGHT_MAX {
            let next = match headers.as_mut() {
                Some(headers) => headers.next().await,
                None => None,
            };
            let Some(listed) = next else {
                listed_all = true;
                break;
            };
            let block = listed.context("ListBlocks failed")?;
            let fetch = match BlockHeader::decode(&block.header) {
                Ok(header) if builder.needs_events(&header) => {
                    let client = client.clone();
                    let tenant = tenant.to_string();
                    let index = block.block_index;
                    Some(tokio::spawn(async move {
                        client.get_block(&tenant, 0, index, true).await
                    }))
                }
                // A header that does not decode is the builder's to report.
                _ => None,
            };
            queue.push_back((block.header, fetch));
        }
        let Some((header, fetch)) = queue.pop_front() else {
            break;
        };
        // Hashing and rendering a block takes milliseconds: off the async workers, so the
        // fetches in flight keep going.
        let added = match fetch {
            None => builder.add_block::<Vec<u8>>(&header, None),
            Some(handle) => {
                let block = handle.await.context("block fetch task failed")??;
                if block.header != header {
                    bar.finish_and_clear();
                    return Ok(Err(format!(
                        "block {}: GetBlock and ListBlocks served different headers",
                        block.block_index
                    )));
                }
                tokio::task::block_in_place(|| builder.add_block(&header, Some(&block.events)))
            }
        };
        if let Err(error) = added {
            bar.finish_and_clear();
            return Ok(Err(error.to_string()));
        }
        bar.set_position(builder.events_written());
        bar.set_message(format!("block {}/{tree_size}", builder.blocks()));
    }
    bar.finish_and_clear();
    let (head, records, block_lines) = match builder.finish() {
        Ok(finished) => finished,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let records = records.into_inner().map_err(|error| error.into_error())?;
    records.sync_all()?;
    drop(block_lines);
    let mut bundle = BufWriter::new(
        File::create(bundle_path)
            .with_context(|| format!("cannot create {}", bundle_path.display()))?,
    );
    let blocks = BufReader::new(File::open(blocks_path)?);
    assemble_bundle(&head, blocks, &mut bundle)?;
    bundle
        .into_inner()
        .map_err(|error| error.into_error())?
        .sync_all()?;
    Ok(Ok(head))
}

/// Runs [`verify_export`] over the two files with a progress bar. `Ok(Err(problem))`:
/// they do not verify.
fn verify_files(
    records_path: &Path,
    bundle_path: &Path,
    key: &VerifierKey,
    quiet: bool,
    events: Option<u64>,
) -> anyhow::Result<Result<ExportSummary, String>> {
    let records = BufReader::new(
        File::open(records_path)
            .with_context(|| format!("cannot open {}", records_path.display()))?,
    );
    let bundle = BufReader::new(
        File::open(bundle_path)
            .with_context(|| format!("cannot open {}", bundle_path.display()))?,
    );
    let bar = progress_bar(
        events,
        "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events verified ({per_sec})",
        quiet,
    );
    let verified = verify_export(records, bundle, key, &mut |checked| {
        if checked % 1024 == 0 {
            bar.set_position(checked);
        }
    });
    bar.finish_and_clear();
    Ok(verified.map_err(|error| error.to_string()))
}

/// The first line of a bundle, for the number of events to show progress against.
fn bundle_events(bundle_path: &Path) -> Option<u64> {
    use std::io::BufRead;
    let mut first_line = String::new();
    let mut reader = BufReader::new(File::open(bundle_path).ok()?);
    // The head holds the tree proof, usually small; a huge one just goes without a bar.
    (&mut reader)
        .take(16 * 1024 * 1024)
        .read_line(&mut first_line)
        .ok()?;
    let head: BundleHead = serde_json::from_str(&first_line).ok()?;
    Some(head.events)
}

/// `verify-export FILE`: offline, with the pinned key alone.
pub fn verify_offline(args: VerifyExportArgs) -> anyhow::Result<ExitCode> {
    let Some(key) = args.key.pinned()? else {
        anyhow::bail!(
            "verify-export works offline and needs a pinned key: pass --key KEY, \
             --key-file FILE or set TRAIL_VERIFIER_KEY (the key `trailctl status` shows)"
        );
    };
    let bundle = args
        .bundle
        .clone()
        .unwrap_or_else(|| bundle_path(&args.file));
    let started = Instant::now();
    let verified = verify_files(
        &args.file,
        &bundle,
        &key,
        args.quiet,
        bundle_events(&bundle),
    )?;
    match verified {
        Ok(summary) => {
            let mut lines = vec![format!(
                "verified  {}: {} events of tenant {} ({}), bundle {}, in {:.1}s",
                args.file.display(),
                group_thousands(summary.events),
                summary.tenant_id,
                summary.file_format.name(),
                bundle.display(),
                started.elapsed().as_secs_f64()
            )];
            lines.extend(summary_lines(&summary, &key, KeyOrigin::Pinned));
            // A closed stdout (`| head`) loses nothing: the exit code says it verified.
            let _ = print_line(&lines.join("\n"));
            Ok(ExitCode::SUCCESS)
        }
        Err(problem) => {
            eprintln!(
                "FAILED: {} with bundle {}: {problem}",
                args.file.display(),
                bundle.display()
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// What a verified export proves, for people.
fn summary_lines(summary: &ExportSummary, key: &VerifierKey, origin: KeyOrigin) -> Vec<String> {
    let trust = match origin {
        KeyOrigin::Pinned => "pinned",
        KeyOrigin::Node => "the node's own key, NOT pinned",
    };
    let checkpoint = &summary.checkpoint;
    let mut lines = vec![format!(
        "included  each event in its block, {} covering blocks under checkpoint {} (tree size \
         {}, seq {}, {}), signed by {} ({trust})",
        group_thousands(summary.blocks),
        checkpoint.origin,
        checkpoint.tree_size,
        checkpoint.last_seq,
        checkpoint.time_text(),
        key.short()
    )];
    match &summary.completeness {
        Completeness::TimeRange {
            start_ns,
            end_ns,
            first_seq,
            last_seq,
            before,
            after,
            open_end,
        } => {
            let range = match (start_ns, end_ns) {
                (Some(start), Some(end)) => {
                    format!(
                        "{} <= ingested_at < {}",
                        format_time(*start),
                        format_time(*end)
                    )
                }
                (Some(start), None) => format!("ingested_at >= {}", format_time(*start)),
                (None, Some(end)) => format!("ingested_at < {}", format_time(*end)),
                (None, None) => "any ingested_at".to_string(),
            };
            let seqs = if last_seq < first_seq {
                "none".to_string()
            } else {
                format!("seqs {first_seq}\u{2013}{last_seq}")
            };
            let mut text = format!("complete  every event with {range}: {seqs}");
            let mut bounds = Vec::new();
            if let Some((seq, time)) = before {
                bounds.push(format!(
                    "seq {seq} (ingested {}) is before",
                    format_time(*time)
                ));
            }
            if let Some((seq, time)) = after {
                bounds.push(format!("seq {seq} (ingested {}) after", format_time(*time)));
            }
            if !bounds.is_empty() {
                text.push_str(&format!("; {}", bounds.join(", ")));
            }
            if *open_end {
                text.push_str(&format!(
                    "; through the checkpoint's seq {}: events recorded after it are not \
                     covered",
                    checkpoint.last_seq
                ));
            }
            lines.push(text);
        }
        Completeness::Filter { filter } => {
            let shown = serde_json::to_string(filter).unwrap_or_default();
            lines.push(format!(
                "filter    {shown}: each exported event is proven; that no other event matches \
                 is not (only a time range without filters is proven complete)"
            ));
        }
    }
    lines
}
