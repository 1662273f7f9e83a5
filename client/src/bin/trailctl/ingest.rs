//! `trailctl ingest`: record a JSON-lines file in concurrent batches.
//!
//! A reader thread reads and parses lines and hands batches to the async side through
//! a bounded queue; at most `--concurrency` batches are in flight. The queue bound makes
//! reading wait for the node, so memory stays at (queue + in flight) batches however
//! large the file is.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::ProgressBar;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use trail_client::json::parse_event;
use trail_client::{Client, Event, RecordBatchResponse};
use trail_proto::v1::record_outcome::Outcome;

use crate::output::{print_line, progress_bar, ProblemReport};

/// A line longer than this is rejected without being parsed. Events are ~500 bytes and
/// the server bounds metadata, so 1 MiB is far beyond any valid event and keeps one
/// runaway line from taking the memory.
const LINE_BYTES_MAX: usize = 1024 * 1024;

/// The reader's read buffer: big enough that a 500-byte line costs no system call.
const READ_BUFFER_BYTES: usize = 1024 * 1024;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Workload JSON-lines file; `-` reads standard input.
    #[arg(value_name = "FILE.jsonl")]
    file: PathBuf,

    /// Events per RecordBatch call.
    #[arg(long, default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,

    /// Batches in flight at once.
    #[arg(long, default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,

    /// Print the summary as a JSON object {accepted, deduplicated, rejected, lines, seconds}.
    #[arg(long)]
    json: bool,

    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Parsed events of consecutive lines, with each event's line number for reports.
#[derive(Debug)]
struct LineBatch {
    events: Vec<Event>,
    line_numbers: Vec<u64>,
    /// Input bytes the batch's lines span (bad lines included), for the progress bar.
    input_bytes: u64,
}

/// What the reader saw.
#[derive(Debug, Default)]
struct ReadTotals {
    /// Non-blank lines.
    lines: u64,
    /// Lines that did not parse (already reported).
    bad_lines: u64,
}

#[derive(Debug, Default)]
struct Totals {
    accepted: u64,
    deduplicated: u64,
    rejected: u64,
}

pub async fn run(client: &Client, args: IngestArgs) -> anyhow::Result<ExitCode> {
    let from_stdin = args.file.as_os_str() == "-";
    let (input, input_bytes): (Box<dyn Read + Send>, Option<u64>) = if from_stdin {
        (Box::new(io::stdin()), None)
    } else {
        let file = File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let length = file.metadata().map(|metadata| metadata.len()).ok();
        (Box::new(file), length)
    };
    let bar = match input_bytes {
        Some(length) => progress_bar(
            Some(length),
            "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg}",
            args.quiet,
        ),
        None => progress_bar(None, "{spinner} {elapsed_precise} {msg}", args.quiet),
    };
    let problems = Arc::new(ProblemReport::new(bar.clone()));

    let batch_size = args.batch_size as usize;
    let concurrency = args.concurrency as usize;
    // Enough queued batches that the reader stays ahead of the senders, no more.
    let queue_batches_max = concurrency * 2;
    let (sender, mut receiver) = mpsc::channel::<LineBatch>(queue_batches_max);
    let reader_problems = Arc::clone(&problems);
    let reader = std::thread::Builder::new()
        .name("ingest-reader".to_string())
        .spawn(move || read_batches(input, batch_size, &sender, &reader_problems))
        .context("cannot start the reader thread")?;

    let started = Instant::now();
    let mut totals = Totals::default();
    let mut events_done: u64 = 0;
    let mut in_flight: JoinSet<(LineBatch, trail_client::Result<RecordBatchResponse>)> =
        JoinSet::new();
    let mut fatal: Option<trail_client::Error> = None;

    'dispatch: while let Some(batch) = receiver.recv().await {
        while in_flight.len() >= concurrency {
            let Some(joined) = in_flight.join_next().await else {
                break;
            };
            let (done, result) = joined.context("batch task failed")?;
            if let Err(error) = settle(done, result, &mut totals, &problems, &bar, &mut events_done)
            {
                fatal = Some(error);
                break 'dispatch;
            }
        }
        let batch_client = client.clone();
        in_flight.spawn(async move {
            let mut batch = batch;
            let events = std::mem::take(&mut batch.events);
            let result = batch_client.record_batch(events).await;
            (batch, result)
        });
    }
    if fatal.is_none() {
        while let Some(joined) = in_flight.join_next().await {
            let (done, result) = joined.context("batch task failed")?;
            if let Err(error) = settle(done, result, &mut totals, &problems, &bar, &mut events_done)
            {
                fatal = Some(error);
                break;
            }
        }
    }
    // On a fatal error, closing the queue stops the reader at its next batch.
    in_flight.abort_all();
    drop(receiver);
    let read_totals = match reader.join() {
        Ok(Ok(read_totals)) => read_totals,
        Ok(Err(error)) => {
            bar.finish_and_clear();
            return Err(error.context("cannot read the input"));
        }
        Err(_) => anyhow::bail!("the reader thread panicked"),
    };
    let elapsed_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    problems.finish();

    totals.rejected += read_totals.bad_lines;
    print_summary(&totals, read_totals.lines, elapsed_s, args.json)?;
    if let Some(error) = fatal {
        return Err(anyhow::Error::new(error).context("ingest stopped"));
    }
    Ok(if totals.rejected == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Counts a finished batch and reports its rejected events. A connection failure is
/// returned to stop the run; any other batch-level error rejects the whole batch.
fn settle(
    batch: LineBatch,
    result: trail_client::Result<RecordBatchResponse>,
    totals: &mut Totals,
    problems: &ProblemReport,
    bar: &ProgressBar,
    events_done: &mut u64,
) -> Result<(), trail_client::Error> {
    let events_count = batch.line_numbers.len() as u64;
    match result {
        Ok(response) => {
            totals.accepted += u64::from(response.accepted);
            totals.deduplicated += u64::from(response.deduplicated);
            totals.rejected += u64::from(response.rejected);
            for outcome in &response.outcomes {
                let Some(Outcome::Error(error)) = &outcome.outcome else {
                    continue;
                };
                let line = batch
                    .line_numbers
                    .get(error.index as usize)
                    .copied()
                    .unwrap_or(0);
                // The server's message may already start with the field's name.
                let text = if error.field.is_empty() {
                    format!("line {line}: {}: {}", error.code, error.message)
                } else if error.message.starts_with(&format!("{}:", error.field)) {
                    format!("line {line}: field {}", error.message)
                } else {
                    format!("line {line}: field {}: {}", error.field, error.message)
                };
                problems.report(&text);
            }
        }
        Err(error) if error.is_connection_failure() => return Err(error),
        Err(error) => {
            totals.rejected += events_count;
            let first = batch.line_numbers.first().copied().unwrap_or(0);
            let last = batch.line_numbers.last().copied().unwrap_or(0);
            problems.report(&format!("lines {first}-{last}: batch refused: {error}"));
        }
    }
    *events_done += events_count;
    bar.inc(batch.input_bytes);
    bar.set_message(format!(
        "{} events",
        crate::output::group_thousands(*events_done)
    ));
    Ok(())
}

/// The reader thread: lines to parsed batches. Bad lines are reported and skipped.
/// Stops early, without error, when the receiver is gone.
fn read_batches(
    input: Box<dyn Read + Send>,
    batch_size: usize,
    sender: &mpsc::Sender<LineBatch>,
    problems: &ProblemReport,
) -> anyhow::Result<ReadTotals> {
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, input);
    let mut totals = ReadTotals::default();
    let mut line_number: u64 = 0;
    let mut line_bytes = Vec::new();
    let mut batch = new_batch(batch_size);
    loop {
        let read = read_line_bounded(&mut reader, &mut line_bytes)?;
        let Some(consumed_bytes) = read.consumed_bytes else {
            break;
        };
        line_number += 1;
        batch.input_bytes += consumed_bytes;
        if read.too_long {
            totals.lines += 1;
            totals.bad_lines += 1;
            problems.report(&format!(
                "line {line_number}: longer than {LINE_BYTES_MAX} bytes"
            ));
            continue;
        }
        let parsed = match std::str::from_utf8(&line_bytes) {
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => parse_event(text).map_err(|error| error.to_string()),
            Err(error) => Err(format!("not UTF-8 after byte {}", error.valid_up_to())),
        };
        totals.lines += 1;
        match parsed {
            Ok(event) => {
                batch.events.push(event);
                batch.line_numbers.push(line_number);
            }
            Err(reason) => {
                totals.bad_lines += 1;
                problems.report(&format!("line {line_number}: {reason}"));
            }
        }
        if batch.events.len() >= batch_size {
            let full = std::mem::replace(&mut batch, new_batch(batch_size));
            if sender.blocking_send(full).is_err() {
                return Ok(totals);
            }
        }
    }
    if !batch.events.is_empty() {
        // The receiver being gone only means the run stopped early.
        let _ = sender.blocking_send(batch);
    }
    Ok(totals)
}

fn new_batch(batch_size: usize) -> LineBatch {
    LineBatch {
        events: Vec::with_capacity(batch_size),
        line_numbers: Vec::with_capacity(batch_size),
        input_bytes: 0,
    }
}

#[derive(Debug)]
struct LineRead {
    /// Bytes consumed including the newline; `None` at the end of the input.
    consumed_bytes: Option<u64>,
    /// The line exceeded [`LINE_BYTES_MAX`]; its content was skipped.
    too_long: bool,
}

/// Reads one line without its line ending into `line`, holding at most
/// [`LINE_BYTES_MAX`] + 1 bytes of it in memory.
fn read_line_bounded<R: BufRead>(reader: &mut R, line: &mut Vec<u8>) -> io::Result<LineRead> {
    line.clear();
    let mut consumed = reader
        .by_ref()
        .take(LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', line)? as u64;
    if consumed == 0 {
        return Ok(LineRead {
            consumed_bytes: None,
            too_long: false,
        });
    }
    let ended = line.last() == Some(&b'\n');
    if ended {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if !ended && line.len() > LINE_BYTES_MAX {
        // Skip the rest of the long line in bounded chunks.
        let mut rest = Vec::new();
        loop {
            rest.clear();
            let skipped = reader
                .by_ref()
                .take(LINE_BYTES_MAX as u64)
                .read_until(b'\n', &mut rest)? as u64;
            consumed += skipped;
            if skipped == 0 || rest.last() == Some(&b'\n') {
                break;
            }
        }
        line.clear();
        return Ok(LineRead {
            consumed_bytes: Some(consumed),
            too_long: true,
        });
    }
    Ok(LineRead {
        consumed_bytes: Some(consumed),
        too_long: false,
    })
}

fn print_summary(totals: &Totals, lines: u64, elapsed_s: f64, as_json: bool) -> anyhow::Result<()> {
    let text = if as_json {
        json!({
            "accepted": totals.accepted,
            "deduplicated": totals.deduplicated,
            "rejected": totals.rejected,
            "lines": lines,
            "seconds": (elapsed_s * 1000.0).round() / 1000.0,
        })
        .to_string()
    } else {
        let recorded = (totals.accepted + totals.deduplicated) as f64;
        let events_per_s = if elapsed_s > 0.0 {
            recorded / elapsed_s
        } else {
            0.0
        };
        format!(
            "accepted: {}  deduplicated: {}  rejected: {}  ({} lines, {:.1}s, {:.0} events/s)",
            totals.accepted, totals.deduplicated, totals.rejected, lines, elapsed_s, events_per_s
        )
    };
    match print_line(&text) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(error).context("cannot write the summary"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn lines_are_split_with_endings_removed() {
        let mut reader = Cursor::new(b"a\r\nbb\n\nccc".to_vec());
        let mut line = Vec::new();
        let mut seen = Vec::new();
        while let Some(bytes) = read_line_bounded(&mut reader, &mut line)
            .unwrap()
            .consumed_bytes
        {
            seen.push((String::from_utf8(line.clone()).unwrap(), bytes));
        }
        let expected = [("a", 3), ("bb", 3), ("", 1), ("ccc", 3)];
        let expected: Vec<(String, u64)> = expected
            .iter()
            .map(|(text, bytes)| (text.to_string(), *bytes))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn an_overlong_line_is_skipped_whole() {
        let mut input = vec![b'x'; LINE_BYTES_MAX * 2 + 10];
        input.extend_from_slice(b"\nnext\n");
        let mut reader = Cursor::new(input);
        let mut line = Vec::new();
        let first = read_line_bounded(&mut reader, &mut line).unwrap();
        assert!(first.too_long);
        assert_eq!(first.consumed_bytes, Some(LINE_BYTES_MAX as u64 * 2 + 11));
        let second = read_line_bounded(&mut reader, &mut line).unwrap();
        assert!(!second.too_long);
        assert_eq!(line, b"next");
    }
}
