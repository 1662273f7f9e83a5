//! `trailctl bench ingest`: ingest throughput, per-batch ack latency, node memory, and
//! the disk's fsync rate as the physical reference.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use serde_json::json;
use trail_client::json::parse_event;
use trail_client::workload::Workload;
use trail_client::{Client, EncodedBatch, Event};

use crate::output::{eprint_above, group_thousands, mebibytes, print_line, progress_bar};
use crate::BenchIngestArgs;

/// Latencies above an hour are recorded as an hour; no RPC waits that long (30 s
/// deadline times 10 attempts is 5 minutes).
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// How long the fsync reference runs. One second gives thousands of samples on an SSD
/// and still ~100 on a spinning disk.
const FSYNC_PROBE_DURATION_MS: u64 = 1_000;
/// Upper bound on fsync samples, in case a disk acknowledges implausibly fast.
const FSYNC_PROBE_SYNCS_MAX: u64 = 1_000_000;
const FSYNC_BLOCK_BYTES: usize = 4096;

#[derive(Debug, Default)]
struct WorkerTotals {
    accepted: u64,
    deduplicated: u64,
    rejected: u64,
    first_error: Option<String>,
    connection_failure: Option<trail_client::Error>,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct FsyncReference {
    syncs_per_s: f64,
    latency_us_p50: u64,
}

pub async fn run(client: &Client, args: BenchIngestArgs) -> anyhow::Result<ExitCode> {
    let batches = prepare_batches(&args).await?;
    let events_count: u64 = batches.iter().map(|batch| batch.len() as u64).sum();
    if events_count == 0 {
        anyhow::bail!("no events to send");
    }

    // Before the load, while the disk is otherwise quiet.
    let fsync_dir = args.fsync_dir.clone();
    let fsync = tokio::task::spawn_blocking(move || measure_fsync(&fsync_dir))
        .await
        .context("fsync probe task failed")?;
    let fsync = match fsync {
        Ok(reference) => Some(reference),
        Err(error) => {
            eprintln!("warning: fsync reference not measured: {error:#}");
            None
        }
    };

    let bar = progress_bar(
        Some(events_count),
        "{spinner} {elapsed_precise} [{wide_bar}] {human_pos}/{human_len} events {per_sec} {msg}",
        args.quiet,
    );
    let batches = Arc::new(batches);
    let next_batch = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    // Calls are logged with their send time since `started` when there is a log.
    let samples_since = args.latency_log.as_ref().map(|_| started);
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    for _ in 0..args.concurrency {
        workers.spawn(worker(
            client.clone(),
            Arc::clone(&batches),
            Arc::clone(&next_batch),
            Arc::clone(&stop),
            bar.clone(),
            samples_since,
        ));
    }
    let mut latency_us = new_histogram();
    let mut totals = WorkerTotals::default();
    let mut samples = Vec::new();
    while let Some(joined) = workers.join_next().await {
        let (worker_latency_us, worker_totals) = joined.context("bench worker failed")?;
        samples.extend(worker_totals.samples);
        latency_us
            .add(&worker_latency_us)
            .expect("histograms share bounds");
        totals.accepted += worker_totals.accepted;
        totals.deduplicated += worker_totals.deduplicated;
        totals.rejected += worker_totals.rejected;
        if totals.first_error.is_none() {
            totals.first_error = worker_totals.first_error;
        }
        if totals.connection_failure.is_none() {
            totals.connection_failure = worker_totals.connection_failure;
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    if let Some(path) = &args.latency_log {
        write_latency_log(path, started_unix, &mut samples)
            .with_context(|| format!("cannot write the latency log {}", path.display()))?;
    }
    if let Some(error) = totals.connection_failure {
        return Err(anyhow::Error::new(error).context("benchmark stopped"));
    }
    if let Some(error) = &totals.first_error {
        eprintln!("warning: some batches failed; first error: {error}");
    }

    let peak_rss_bytes = match client.status().await {
        Ok(status) => Some(status.peak_rss_bytes),
        Err(error) => {
            eprintln!("warning: node status unavailable after the run: {error}");
            None
        }
    };
    let report = Report {
        events_count,
        totals: &totals,
        elapsed,
        latency_us: &latency_us,
        batch_size: args.batch_size,
        concurrency: args.concurrency,
        peak_rss_bytes,
        fsync,
        retries: client.retry_stats(),
    };
    let text = if args.json {
        report.json()
    } else {
        report.text()
    };
    if let Err(error) = print_line(&text) {
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(anyhow::Error::new(error).context("cannot write the report"));
        }
    }
    Ok(if totals.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One of `--concurrency` senders: takes the next batch until none are left.
async fn worker(
    client: Client,
    batches: Arc<Vec<EncodedBatch>>,
    next_batch: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    bar: ProgressBar,
    samples_since: Option<Instant>,
) -> (Histogram<u64>, WorkerTotals) {
    let mut latency_us = new_histogram();
    let mut totals = WorkerTotals::default();
    while !stop.load(Ordering::Relaxed) {
        let index = next_batch.fetch_add(1, Ordering::Relaxed);
        let Some(batch) = batches.get(index) else {
            break;
        };
        let sent = Instant::now();
        let result = client.record_batch_encoded(batch).await;
        let elapsed_us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        latency_us.saturating_record(elapsed_us.clamp(1, LATENCY_US_MAX));
        if let Some(started) = samples_since {
            totals.samples.push(Sample {
                sent_us: u64::try_from((sent - started).as_micros()).unwrap_or(u64::MAX),
                latency_us: elapsed_us,
                events: batch.len() as u32,
            });
        }
        match result {
            Ok(response) => {
                totals.accepted += u64::from(response.accepted);
                totals.deduplicated += u64::from(response.deduplicated);
                totals.rejected += u64::from(response.rejected);
                if response.rejected > 0 && totals.first_error.is_none() {
                    totals.first_error = first_event_error(&response);
                }
            }
            Err(error) if error.is_connection_failure() => {
                stop.store(true, Ordering::Relaxed);
                totals.connection_failure = Some(error);
                break;
            }
            Err(error) => {
                totals.rejected += batch.len() as u64;
                if totals.first_error.is_none() {
                    totals.first_error = Some(error.to_string());
                }
                eprint_above(&bar, &format!("batch {index} failed: {error}"));
            }
        }
        bar.inc(batch.len() as u64);
    }
    (latency_us, totals)
}

/// One batch of a run, for `--latency-log`.
#[derive(Debug)]
struct Sample {
    sent_us: u64,
    latency_us: u64,
    events: u32,
}

fn write_latency_log(
    path: &Path,
    started_unix: Duration,
    samples: &mut [Sample],
) -> std::io::Result<()> {
    samples.sort_unstable_by_key(|sample| sample.sent_us);
    let mut out = std::io::BufWriter::new(File::create(path)?);
    writeln!(out, "sent_unix_ms,sent_ms,latency_ms,events")?;
    let started_unix_us = started_unix.as_micros() as u64;
    for sample in samples.iter() {
        writeln!(
            out,
            "{:.3},{:.3},{:.3},{}",
            (started_unix_us + sample.sent_us) as f64 / 1e3,
            sample.sent_us as f64 / 1e3,
            sample.latency_us as f64 / 1e3,
            sample.events
        )?;
    }
    out.flush()
}

fn first_event_error(response: &trail_client::RecordBatchResponse) -> Option<String> {
    use trail_proto::v1::record_outcome::Outcome;
    response
        .outcomes
        .iter()
        .find_map(|outcome| match &outcome.outcome {
            Some(Outcome::Error(error)) => {
                Some(format!("{} {}: {}", error.code, error.field, error.message))
            }
            _ => None,
        })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("histogram bounds are valid")
}

/// Generates or reads all events and encodes them into batches, before any clock runs.
async fn prepare_batches(args: &BenchIngestArgs) -> anyhow::Result<Vec<EncodedBatch>> {
    let batch_size = args.batch_size as usize;
    let quiet = args.quiet;
    let seed = args.seed;
    let count = args.count;
    let events_file = args.events.clone();
    let keep_ids = args.keep_ids;
    // Generation and encoding take seconds of CPU for a million events: off the async
    // workers.
    tokio::task::spawn_blocking(move || match events_file {
        Some(path) => read_batches(&path, batch_size, keep_ids, quiet),
        None => Ok(generate_batches(seed, count, batch_size, quiet)),
    })
    .await
    .context("preparation task failed")?
}

fn generate_batches(seed: u64, count: u64, batch_size: usize, quiet: bool) -> Vec<EncodedBatch> {
    let bar = progress_bar(
        Some(count),
        "preparing {spinner} [{wide_bar}] {human_pos}/{human_len} events",
        quiet,
    );
    let mut workload = Workload::new(seed, count);
    let mut batches = Vec::with_capacity((count as usize).div_ceil(batch_size));
    let mut remaining = count;
    while remaining > 0 {
        let take = remaining.min(batch_size as u64);
        let mut events = Vec::with_capacity(take as usize);
        for _ in 0..take {
            let mut event = workload.next_event();
            // Fresh ids so a second run records new events instead of measuring dedup.
            event.event_id = uuid::Uuid::new_v4().to_string();
            events.push(event);
        }
        batches.push(EncodedBatch::new(events));
        remaining -= take;
        bar.inc(take);
    }
    bar.finish_and_clear();
    batches
}

fn read_batches(
    path: &Path,
    batch_size: usize,
    keep_ids: bool,
    quiet: bool,
) -> anyhow::Result<Vec<EncodedBatch>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let length = file.metadata().map(|metadata| metadata.len()).ok();
    let bar = progress_bar(
        length,
        "preparing {spinner} [{wide_bar}] {bytes}/{total_bytes}",
        quiet,
    );
    let reader = BufReader::with_capacity(1024 * 1024, file);
    let mut batches = Vec::new();
    let mut events: Vec<Event> = Vec::with_capacity(batch_size);
    for (index, line) in reader.lines().enumerate() {
        let line_number = index + 1;
        let text =
            line.with_context(|| format!("{}: cannot read line {line_number}", path.display()))?;
        bar.inc(text.len() as u64 + 1);
        if text.trim().is_empty() {
            continue;
        }
        // A benchmark of a partly broken file measures the wrong thing: stop instead.
        let mut event = parse_event(&text)
            .with_context(|| format!("{}: line {line_number}", path.display()))?;
        if !keep_ids {
            event.event_id = uuid::Uuid::new_v4().to_string();
        }
        events.push(event);
        if events.len() >= batch_size {
            let full = std::mem::replace(&mut events, Vec::with_capacity(batch_size));
            batches.push(EncodedBatch::new(full));
        }
    }
    if !events.is_empty() {
        batches.push(EncodedBatch::new(events));
    }
    bar.finish_and_clear();
    Ok(batches)
}

/// Appends 4 KiB and fdatasyncs, repeatedly for ~1 s, on a scratch file in `dir`: the
/// cost of the durable append every acknowledged write of the node waits for.
fn measure_fsync(dir: &Path) -> anyhow::Result<FsyncReference> {
    let path: PathBuf = dir.join(format!(".trailctl-fsync-probe-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let probe = run_fsync_probe(&mut file);
    drop(file);
    // The probe file is scratch; failing to remove it is not worth failing the run.
    let _ = fs::remove_file(&path);
    probe.with_context(|| format!("fsync probe on {}", path.display()))
}

fn run_fsync_probe(file: &mut File) -> std::io::Result<FsyncReference> {
    let block = [0x5au8; FSYNC_BLOCK_BYTES];
    let mut latency_us = new_histogram();
    let started = Instant::now();
    let mut syncs: u64 = 0;
    while started.elapsed() < Duration::from_millis(FSYNC_PROBE_DURATION_MS)
        && syncs < FSYNC_PROBE_SYNCS_MAX
    {
        let sync_started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        let elapsed_us = u64::try_from(sync_started.elapsed().as_micros()).unwrap_or(u64::MAX);
        latency_us.saturating_record(elapsed_us.clamp(1, LATENCY_US_MAX));
        syncs += 1;
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    Ok(FsyncReference {
        syncs_per_s: syncs as f64 / elapsed_s,
        latency_us_p50: latency_us.value_at_quantile(0.5),
    })
}

struct Report<'a> {
    events_count: u64,
    totals: &'a WorkerTotals,
    elapsed: Duration,
    latency_us: &'a Histogram<u64>,
    batch_size: u32,
    concurrency: u32,
    peak_rss_bytes: Option<u64>,
    fsync: Option<FsyncReference>,
    retries: trail_client::RetryStats,
}

impl Report<'_> {
    fn events_per_s(&self) -> f64 {
        let recorded = (self.totals.accepted + self.totals.deduplicated) as f64;
        recorded / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn text(&self) -> String {
        let mut lines = vec![
            format!(
                "events      {} accepted, {} deduplicated, {} rejected in {:.1} s",
                group_thousands(self.totals.accepted),
                group_thousands(self.totals.deduplicated),
                group_thousands(self.totals.rejected),
                self.elapsed.as_secs_f64()
            ),
            format!(
                "throughput  {} events/s",
                group_thousands(self.events_per_s().round() as u64)
            ),
            format!(
                "ack latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms   (per batch of {}, {} in flight)",
                self.latency_ms(0.5),
                self.latency_ms(0.99),
                self.latency_us.max() as f64 / 1000.0,
                self.batch_size,
                self.concurrency
            ),
            match self.peak_rss_bytes {
                Some(bytes) => format!("node memory peak RSS {} MiB", mebibytes(bytes)),
                None => "node memory peak RSS unknown (status failed)".to_string(),
            },
            match self.fsync {
                Some(fsync) => format!(
                    "reference   fsync 4 KiB: {}/s, p50 {:.2} ms (same disk, same run)",
                    group_thousands(fsync.syncs_per_s.round() as u64),
                    fsync.latency_us_p50 as f64 / 1000.0
                ),
                None => "reference   fsync 4 KiB: not measured".to_string(),
            },
        ];
        if self.retries.request_retries > 0 || self.retries.event_retries > 0 {
            lines.push(format!(
                "retries     {} requests, {} events resent (node refused for load or was unavailable)",
                group_thousands(self.retries.request_retries),
                group_thousands(self.retries.event_retries)
            ));
        }
        lines.join("\n")
    }

    fn json(&self) -> String {
        let round3 = |value: f64| (value * 1000.0).round() / 1000.0;
        json!({
            "events": self.events_count,
            "accepted": self.totals.accepted,
            "deduplicated": self.totals.deduplicated,
            "rejected": self.totals.rejected,
            "seconds": round3(self.elapsed.as_secs_f64()),
            "events_per_s": self.events_per_s().round(),
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "ack_latency_ms": {
                "p50": round3(self.latency_ms(0.5)),
                "p99": round3(self.latency_ms(0.99)),
                "max": round3(self.latency_us.max() as f64 / 1000.0),
            },
            "node_peak_rss_bytes": self.peak_rss_bytes,
            "fsync_4k": self.fsync.map(|fsync| json!({
                "per_s": fsync.syncs_per_s.round(),
                "latency_ms_p50": round3(fsync.latency_us_p50 as f64 / 1000.0),
            })),
            "request_retries": self.retries.request_retries,
            "event_retries": self.retries.event_retries,
            "first_error": self.totals.first_error,
        })
        .to_string()
    }
}
