//! Offline verification of an export against its bundle and a pinned key
//! (docs/PROOFS.md, "Exports", where each check is listed in order). Pure: reads two
//! `BufRead`s, streaming.
//!
//! Memory: one record, one block line (its proven leaves), and 40 bytes per covering
//! block (index and hash, for the stream-tree multiproof at the end), whatever the
//! number of events.

use std::fmt;
use std::io::BufRead;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use super::multiproof::{multiproof_root, MultiproofError};
use super::record::{
    borrowed, parse_record, render_csv_unescaped, render_record, RawRecord, ReadRecordError,
    RecordError, RecordReader, CSV_COLUMNS,
};
use super::{
    BlockLine, BundleHead, ExportFilter, FileFormat, Selection, BUNDLE_LINE_BYTES_MAX,
    EXPORT_FORMAT_V1, RECORD_BYTES_MAX,
};
use crate::block::{block_hash, BlockHeader, BlockHeaderError};
use crate::checkpoint::{format_time, parse_time, split_stream, Checkpoint, CheckpointError};
use crate::event::{event_leaf_hash, CanonicalEvent, EventDecodeError};
use crate::note::VerifierKey;

/// Where the first problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLocation {
    /// The bundle's first line.
    BundleHead,
    BundleLine {
        line: u64,
    },
    /// A bundle line whose block header decoded.
    Block {
        line: u64,
        block_index: u64,
        first_seq: u64,
        last_seq: u64,
    },
    /// After the bundle's last line.
    BundleEnd {
        lines: u64,
    },
    /// An export line (the first line of a CSV record), with its seq when it was read.
    ExportLine {
        line: u64,
        seq: Option<u64>,
    },
    /// After the export's last line.
    ExportEnd {
        lines: u64,
    },
    /// The covering blocks under the checkpoint.
    StreamTree {
        tree_size: u64,
    },
}

impl fmt::Display for ExportLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExportLocation::BundleHead => formatter.write_str("bundle line 1 (head)"),
            ExportLocation::BundleLine { line } => write!(formatter, "bundle line {line}"),
            ExportLocation::Block {
                line,
                block_index,
                first_seq,
                last_seq,
            } => write!(
                formatter,
                "bundle line {line} (block {block_index}, seqs {first_seq}\u{2013}{last_seq})"
            ),
            ExportLocation::BundleEnd { lines } => {
                write!(formatter, "end of the bundle (after line {lines})")
            }
            ExportLocation::ExportLine {
                line,
                seq: Some(seq),
            } => write!(formatter, "export line {line} (seq {seq})"),
            ExportLocation::ExportLine { line, seq: None } => {
                write!(formatter, "export line {line}")
            }
            ExportLocation::ExportEnd { lines } => {
                write!(formatter, "end of the export (after line {lines})")
            }
            ExportLocation::StreamTree { tree_size } => {
                write!(formatter, "stream tree (checkpoint of {tree_size} blocks)")
            }
        }
    }
}

/// Which check failed, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportFailure {
    // Reading either file.
    #[error("{0}")]
    Read(ReadRecordError),
    #[error("the bundle is empty")]
    EmptyBundle,
    #[error("not a trail-export-v1 bundle line: {reason}")]
    BundleJson { reason: String },
    #[error("bundle format is {found:?}, expected \"trail-export-v1\"")]
    Format { found: String },
    #[error("field {field} is invalid: {reason}")]
    Field { field: String, reason: String },

    // The head: checkpoint and selection.
    #[error("{0}")]
    Checkpoint(CheckpointError),
    #[error("the bundle's stream {stream:?} is not \"{tenant_id}/<stream index>\"")]
    StreamNotTenants { stream: String, tenant_id: String },
    #[error("the checkpoint is for stream {checkpoint_stream}, the bundle for {stream}")]
    CheckpointStream {
        checkpoint_stream: String,
        stream: String,
    },
    #[error("selection: {reason}")]
    Selection { reason: String },
    #[error("bound event {which}: {reason}")]
    Bound { which: &'static str, reason: String },
    #[error("filter field {field}: {reason}")]
    Filter { field: &'static str, reason: String },

    // Block lines.
    #[error("header does not decode: {0}")]
    HeaderDecode(BlockHeaderError),
    #[error("header names stream {found}")]
    HeaderStream { found: String },
    #[error("the line says block_index {line}, the header {header}")]
    BlockIndexField { line: u64, header: u64 },
    #[error("block {block_index} is not under the checkpoint, whose tree has {tree_size} blocks")]
    BlockBeyondTree { block_index: u64, tree_size: u64 },
    #[error(
        "block {block_index} comes after block {previous}: blocks must be in increasing order"
    )]
    BlockOrder { block_index: u64, previous: u64 },
    #[error(
        "block {previous} is followed by block {block_index}: a time range's covering blocks \
         are consecutive (blocks in between were removed from the bundle)"
    )]
    BlocksNotConsecutive { block_index: u64, previous: u64 },
    #[error(
        "prev_block_hash {} is not the hash of block {previous} ({}): the chain is broken",
        hex::encode(.found),
        hex::encode(.expected)
    )]
    ChainLink {
        found: [u8; 32],
        expected: [u8; 32],
        previous: u64,
    },
    #[error("first_seq {found} does not follow seq {previous_last} of the previous block")]
    SeqContinuity { found: u64, previous_last: u64 },
    #[error("the next seq to prove is {next}, not in this block")]
    BlockMisplaced { next: u64 },
    #[error("seqs: {reason}")]
    BlockSeqs { reason: String },
    #[error("block proof: {0}")]
    BlockProof(MultiproofError),
    #[error(
        "the {proven} proven events{} and the block proof do not give the header's merkle \
         root: an event was edited, or a line removed, added or moved",
        lines_text(*.lines)
    )]
    BlockRoot {
        proven: usize,
        lines: Option<(u64, u64)>,
    },
    #[error("the head announces {declared} block lines, the bundle has {found}")]
    BlockLinesCount { declared: u64, found: u64 },
    #[error("the bundle has more lines than the {declared} block lines its head announces")]
    ExtraBundleLine { declared: u64 },
    #[error("the bundle's blocks prove seqs up to {proven}, the range's proofs run to {high}")]
    RangeNotCovered { proven: u64, high: u64 },

    // Records.
    #[error("the CSV header row is not {}", CSV_COLUMNS.join(","))]
    CsvHeader,
    #[error("{0}")]
    Record(RecordError),
    #[error(
        "the fields do not hash to the line's leaf_hash {}: a field (or the leaf_hash) was edited",
        hex::encode(.leaf_hash)
    )]
    LeafHash { leaf_hash: [u8; 32] },
    #[error(
        "the line is not the one spelling of its fields (it was reformatted, or a byte \
         changed outside the values)"
    )]
    NotCanonical,
    #[error("the event belongs to tenant {found}, the export is of tenant {expected}")]
    RecordTenant { found: String, expected: String },
    #[error("the event is of stream {found}, the export of stream {expected}")]
    RecordStream { found: String, expected: String },
    #[error("seq {found} follows seq {previous}: lines are out of order or repeated")]
    SeqOrder { found: u64, previous: u64 },
    #[error(
        "seq {missing} is missing: this line holds seq {found} (a line was removed, or lines \
         were reordered)"
    )]
    SeqMissing { missing: u64, found: u64 },
    #[error("seq {found} is not proven by the bundle, which proves seq {expected} here")]
    SeqNotProven { found: u64, expected: u64 },
    #[error(
        "the export ends, but the bundle proves seq {seq} in block {block_index}: lines were \
         removed"
    )]
    LinesMissing { seq: u64, block_index: u64 },
    #[error("no block of the bundle proves this line (an added line)")]
    ExtraLine,
    #[error("the export has {found} lines of events, the bundle says {declared}")]
    EventsCount { declared: u64, found: u64 },
    #[error("ingested at {ingested_at}, outside the range {range}")]
    OutsideRange { ingested_at: String, range: String },
    #[error(
        "ingested at {ingested_at}, before the previous line's {previous}: the stream's \
         ingested_at is not monotonic here, so the range cannot be proven complete"
    )]
    NotMonotonic {
        ingested_at: String,
        previous: String,
    },
    #[error("the event does not match the export's filter on {field}")]
    FilterMismatch { field: &'static str },

    // The stream tree.
    #[error("tree proof: {0}")]
    TreeProof(MultiproofError),
    #[error(
        "the covering blocks and the tree proof do not give the checkpoint's root: a block \
         header was altered, or a block is not at its index under this checkpoint"
    )]
    TreeRoot,
    #[error(
        "the range runs to the checkpoint's last seq {last_seq}, but the last covering block \
         ({block_index}, seqs to {block_last_seq}) is not the checkpoint's last block \
         ({tree_size} blocks)"
    )]
    LastBlock {
        last_seq: u64,
        block_index: u64,
        block_last_seq: u64,
        tree_size: u64,
    },
}

fn lines_text(lines: Option<(u64, u64)>) -> String {
    match lines {
        Some((first, last)) if first == last => format!(" (export line {first})"),
        Some((first, last)) => format!(" (export lines {first}\u{2013}{last})"),
        None => String::new(),
    }
}

/// The first problem of an export: where, and which check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {failure}")]
pub struct ExportError {
    pub location: ExportLocation,
    /// Boxed: some failures carry two hashes, and errors are rare.
    pub failure: Box<ExportFailure>,
}

fn fail<T>(location: ExportLocation, failure: ExportFailure) -> Result<T, ExportError> {
    Err(ExportError {
        location,
        failure: Box::new(failure),
    })
}

/// What a verified export proves beyond inclusion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    /// The records are exactly the stream's events with `start <= ingested_at < end`
    /// under the checkpoint: seqs `first_seq ..= last_seq`, bounded by `before` and
    /// `after` (seq, ingested_at) where they exist. `open_end`: no event after the range
    /// is under the checkpoint, so events recorded after the checkpoint are not covered.
    TimeRange {
        start_ns: Option<i64>,
        end_ns: Option<i64>,
        first_seq: u64,
        last_seq: u64,
        before: Option<(u64, i64)>,
        after: Option<(u64, i64)>,
        open_end: bool,
    },
    /// The records are events the node's query selected; each is proven, the set is not.
    Filter { filter: ExportFilter },
}

/// A verified export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub tenant_id: String,
    pub stream: String,
    pub file_format: FileFormat,
    pub events: u64,
    /// Covering blocks.
    pub blocks: u64,
    pub checkpoint: Checkpoint,
    pub completeness: Completeness,
}

/// A range bound as proven: its seq, ingested_at and leaf hash.
#[derive(Debug, Clone, Copy)]
struct Bound {
    seq: u64,
    ingested_at: i64,
    leaf: [u8; 32],
}

#[derive(Debug, Clone)]
enum Plan {
    TimeRange {
        start_ns: Option<i64>,
        end_ns: Option<i64>,
        first_seq: u64,
        last_seq: u64,
        before: Option<Bound>,
        after: Option<Bound>,
        /// The seqs the blocks prove: `low ..= high`.
        low: u64,
        high: u64,
    },
    Filter {
        filter: ExportFilter,
    },
}

/// The last block accepted.
#[derive(Debug, Clone, Copy)]
struct PreviousBlock {
    index: u64,
    hash: [u8; 32],
    last_seq: u64,
}

/// The last record accepted.
#[derive(Debug, Clone, Copy)]
struct PreviousRecord {
    seq: u64,
    ingested_at: i64,
}

struct Verifier<'p, E> {
    checkpoint: Checkpoint,
    head: BundleHead,
    plan: Plan,
    records: RecordReader<E>,
    records_read: u64,
    previous_record: Option<PreviousRecord>,
    previous_block: Option<PreviousBlock>,
    /// The next seq a time range's blocks must prove.
    next_proven: u64,
    covering: Vec<(u64, [u8; 32])>,
    progress: &'p mut dyn FnMut(u64),
}

fn decode_hashes(field: &str, texts: &[String]) -> Result<Vec<[u8; 32]>, ExportFailure> {
    let mut hashes = Vec::with_capacity(texts.len());
    for (position, text) in texts.iter().enumerate() {
        // Lower case only, as written: one spelling per hash.
        let mut hash = [0u8; 32];
        let lower = text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'));
        if text.len() != 64 || !lower || hex::decode_to_slice(text, &mut hash).is_err() {
            return Err(ExportFailure::Field {
                field: format!("{field}[{position}]"),
                reason: format!("{text:?} is not 64 lower-case hex digits"),
            });
        }
        hashes.push(hash);
    }
    Ok(hashes)
}

fn selection_error(reason: impl Into<String>) -> ExportFailure {
    ExportFailure::Selection {
        reason: reason.into(),
    }
}

fn read_error(line: u64, error: ReadRecordError, bundle: bool) -> ExportError {
    let location = if bundle {
        ExportLocation::BundleLine { line }
    } else {
        ExportLocation::ExportLine { line, seq: None }
    };
    ExportError {
        location,
        failure: Box::new(ExportFailure::Read(error)),
    }
}

/// A range as text: `[start, end)` with `-inf`/`+inf` for a missing bound.
fn range_text(start_ns: Option<i64>, end_ns: Option<i64>) -> String {
    format!(
        "[{}, {})",
        start_ns.map_or("-inf".to_string(), format_time),
        end_ns.map_or("+inf".to_string(), format_time)
    )
}

/// Checks a bound event: decodes, is the stream's, has the expected seq. Returns its
/// ingested_at and leaf.
fn check_bound(
    which: &'static str,
    encoded: &str,
    stream: &str,
    tenant_id: &str,
    seq: u64,
) -> Result<Bound, ExportFailure> {
    let bound_error = |reason: String| ExportFailure::Bound { which, reason };
    let bytes = BASE64
        .decode(encoded)
        .map_err(|error| bound_error(format!("not standard base64: {error}")))?;
    let event = CanonicalEvent::decode(&bytes)
        .map_err(|error: EventDecodeError| bound_error(format!("does not decode: {error}")))?;
    if event.tenant_id != tenant_id || event.stream != stream {
        return Err(bound_error(format!(
            "is of tenant {} and stream {}, not the export's",
            event.tenant_id, event.stream
        )));
    }
    if event.seq != seq {
        return Err(bound_error(format!(
            "has seq {}, expected {seq}",
            event.seq
        )));
    }
    Ok(Bound {
        seq,
        ingested_at: event.ingested_at,
        leaf: event_leaf_hash(&bytes),
    })
}

/// The plan a head's selection describes, checked against the checkpoint.
fn plan_of(head: &BundleHead, checkpoint: &Checkpoint) -> Result<Plan, ExportFailure> {
    match &head.selection {
        Selection::Filter { filter } => {
            filter
                .check()
                .map_err(|(field, reason)| ExportFailure::Filter { field, reason })?;
            Ok(Plan::Filter {
                filter: filter.clone(),
            })
        }
        Selection::TimeRange {
            ingested_at_start,
            ingested_at_end,
            first_seq,
            last_seq,
            before,
            after,
        } => {
            let time = |field: &str, text: &Option<String>| match text {
                None => Ok(None),
                Some(text) => parse_time(text).map(Some).ok_or_else(|| {
                    selection_error(format!(
                        "{field} {text:?} is not RFC 3339 UTC with nine fraction digits"
                    ))
                }),
            };
            let start_ns = time("ingested_at_start", ingested_at_start)?;
            let end_ns = time("ingested_at_end", ingested_at_end)?;
            let (first_seq, last_seq) = (*first_seq, *last_seq);
            let checkpoint_seq = checkpoint.last_seq;
            if checkpoint_seq == 0 {
                return Err(selection_error(
                    "the checkpoint covers no event: a time range needs at least one to prove",
                ));
            }
            if let (Some(start), Some(end)) = (start_ns, end_ns) {
                if end <= start {
                    return Err(selection_error(
                        "ingested_at_end is not after ingested_at_start",
                    ));
                }
            }
            if first_seq == 0 || last_seq.saturating_add(1) < first_seq {
                return Err(selection_error(format!(
                    "seqs {first_seq}..={last_seq} are not a run of seqs from 1"
                )));
            }
            if last_seq > checkpoint_seq {
                return Err(selection_error(format!(
                    "last_seq {last_seq} is beyond the checkpoint's seq {checkpoint_seq}"
                )));
            }
            if start_ns.is_none() && first_seq != 1 {
                return Err(selection_error(format!(
                    "the range has no start, so it starts at seq 1, not {first_seq}"
                )));
            }
            if end_ns.is_none() && last_seq != checkpoint_seq {
                return Err(selection_error(format!(
                    "the range has no end, so it runs to the checkpoint's seq {checkpoint_seq}, \
                     not {last_seq}"
                )));
            }
            let count = last_seq + 1 - first_seq;
            if head.events != count {
                return Err(selection_error(format!(
                    "seqs {first_seq}..={last_seq} are {count} events, the head says {}",
                    head.events
                )));
            }
            let before = match (first_seq > 1, before) {
                (false, None) => None,
                (true, Some(encoded)) => {
                    let bound = check_bound(
                        "before",
                        encoded,
                        &head.stream,
                        &head.tenant_id,
                        first_seq - 1,
                    )?;
                    let start = start_ns.expect("a range with a start (checked above)");
                    if bound.ingested_at >= start {
                        return Err(ExportFailure::Bound {
                            which: "before",
                            reason: format!(
                                "seq {} was ingested at {}, not before the range's start {}: \
                                 it belongs in the range",
                                bound.seq,
                                format_time(bound.ingested_at),
                                format_time(start)
                            ),
                        });
                    }
                    Some(bound)
                }
                (true, None) => {
                    return Err(selection_error(format!(
                        "the range starts at seq {first_seq}, so the event before it (seq {}) \
                         must bound it, and it is absent",
                        first_seq - 1
                    )))
                }
                (false, Some(_)) => {
                    return Err(selection_error(
                        "the range starts at seq 1: no event is before it",
                    ))
                }
            };
            let after = match (last_seq < checkpoint_seq, after) {
                (false, None) => None,
                (true, Some(encoded)) => {
                    let bound = check_bound(
                        "after",
                        encoded,
                        &head.stream,
                        &head.tenant_id,
                        last_seq + 1,
                    )?;
                    let end = end_ns.expect("a range with an end (checked above)");
                    if bound.ingested_at < end {
                        return Err(ExportFailure::Bound {
                            which: "after",
                            reason: format!(
                                "seq {} was ingested at {}, before the range's end {}: it \
                                 belongs in the range",
                                bound.seq,
                                format_time(bound.ingested_at),
                                format_time(end)
                            ),
                        });
                    }
                    Some(bound)
                }
                (true, None) => {
                    let reason = format!(
                        "the range ends at seq {last_seq}, before the checkpoint's \
                         {checkpoint_seq}, so the event after it (seq {}) must bound it, and \
                         it is absent",
                        last_seq + 1
                    );
                    return Err(selection_error(reason));
                }
                (false, Some(_)) => {
                    return Err(selection_error(
                        "the range runs to the checkpoint's last seq: no event is after it",
                    ))
                }
            };
            Ok(Plan::TimeRange {
                start_ns,
                end_ns,
                first_seq,
                last_seq,
                before,
                after,
                low: first_seq.saturating_sub(1).max(1),
                high: (last_seq + 1).min(checkpoint_seq),
            })
        }
    }
}

/// Verifies an export (`export`, the records) against its bundle (`bundle`) with the
/// pinned `key`, offline. `progress` is called with the number of records checked so
/// far. Returns what was proven, or the first problem, located.
pub fn verify_export<E: BufRead, B: BufRead>(
    export: E,
    bundle: B,
    key: &VerifierKey,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportSummary, ExportError> {
    let mut bundle_lines = RecordReader::new(bundle, FileFormat::Jsonl, BUNDLE_LINE_BYTES_MAX);
    let head_text = match bundle_lines.next_record() {
        Ok(Some(raw)) => raw.text,
        Ok(None) => return fail(ExportLocation::BundleHead, ExportFailure::EmptyBundle),
        Err((line, error)) => return Err(read_error(line, error, true)),
    };
    let head: BundleHead = serde_json::from_str(&head_text).map_err(|error| ExportError {
        location: ExportLocation::BundleHead,
        failure: Box::new(ExportFailure::BundleJson {
            reason: error.to_string(),
        }),
    })?;
    let at_head = |failure: ExportFailure| ExportError {
        location: ExportLocation::BundleHead,
        failure: Box::new(failure),
    };
    if head.format != EXPORT_FORMAT_V1 {
        return Err(at_head(ExportFailure::Format {
            found: head.format.clone(),
        }));
    }
    // 1. The checkpoint, under the pinned key, for the bundle's stream and tenant.
    let checkpoint = Checkpoint::from_note(&head.checkpoint, key)
        .map_err(|error| at_head(ExportFailure::Checkpoint(error)))?;
    let stream_is_tenants =
        split_stream(&head.stream).is_some_and(|(tenant_id, _)| tenant_id == head.tenant_id);
    if !stream_is_tenants {
        return Err(at_head(ExportFailure::StreamNotTenants {
            stream: head.stream.clone(),
            tenant_id: head.tenant_id.clone(),
        }));
    }
    if checkpoint.stream != head.stream {
        return Err(at_head(ExportFailure::CheckpointStream {
            checkpoint_stream: checkpoint.stream.clone(),
            stream: head.stream.clone(),
        }));
    }
    // 2. The selection, its bounds, and the tree proof's syntax.
    let plan = plan_of(&head, &checkpoint).map_err(at_head)?;
    let tree_proof = decode_hashes("tree_proof", &head.tree_proof).map_err(at_head)?;

    let mut records = RecordReader::new(export, head.file_format, RECORD_BYTES_MAX);
    if head.file_format == FileFormat::Csv {
        match records.next_record() {
            Ok(Some(raw)) if raw.text == CSV_COLUMNS.join(",") => {}
            Ok(Some(raw)) => {
                return fail(
                    ExportLocation::ExportLine {
                        line: raw.line,
                        seq: None,
                    },
                    ExportFailure::CsvHeader,
                )
            }
            Ok(None) => {
                return fail(
                    ExportLocation::ExportEnd { lines: 0 },
                    ExportFailure::CsvHeader,
                )
            }
            Err((line, error)) => return Err(read_error(line, error, false)),
        }
    }
    let next_proven = match plan {
        Plan::TimeRange { low, .. } => low,
        Plan::Filter { .. } => 0,
    };
    let mut verifier = Verifier {
        checkpoint,
        head,
        plan,
        records,
        records_read: 0,
        previous_record: None,
        previous_block: None,
        next_proven,
        covering: Vec::new(),
        progress,
    };
    // 3. Each block line, with the records it proves.
    for _ in 0..verifier.head.blocks {
        let raw = match bundle_lines.next_record() {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return fail(
                    ExportLocation::BundleEnd {
                        lines: bundle_lines.lines(),
                    },
                    ExportFailure::BlockLinesCount {
                        declared: verifier.head.blocks,
                        found: bundle_lines.lines().saturating_sub(1),
                    },
                )
            }
            Err((line, error)) => return Err(read_error(line, error, true)),
        };
        verifier.block(&raw)?;
    }
    match bundle_lines.next_record() {
        Ok(None) => {}
        Ok(Some(raw)) => {
            return fail(
                ExportLocation::BundleLine { line: raw.line },
                ExportFailure::ExtraBundleLine {
                    declared: verifier.head.blocks,
                },
            )
        }
        Err((line, error)) => return Err(read_error(line, error, true)),
    }
    verifier.finish(&tree_proof, bundle_lines.lines())
}

impl<E: BufRead> Verifier<'_, E> {
    /// One block line: its header in the chain, the records it proves, its merkle root.
    fn block(&mut self, raw: &RawRecord) -> Result<(), ExportError> {
        let at_line = ExportLocation::BundleLine { line: raw.line };
        let line: BlockLine = match serde_json::from_str(&raw.text) {
            Ok(line) => line,
            Err(error) => {
                return fail(
                    at_line,
                    ExportFailure::BundleJson {
                        reason: error.to_string(),
                    },
                )
            }
        };
        let header_bytes = match BASE64.decode(&line.header) {
            Ok(bytes) => bytes,
            Err(error) => {
                return fail(
                    at_line,
                    ExportFailure::Field {
                        field: "header".to_string(),
                        reason: format!("not standard base64: {error}"),
                    },
                )
            }
        };
        let header = match BlockHeader::decode(&header_bytes) {
            Ok(header) => header,
            Err(error) => return fail(at_line, ExportFailure::HeaderDecode(error)),
        };
        let location = ExportLocation::Block {
            line: raw.line,
            block_index: header.block_index,
            first_seq: header.first_seq,
            last_seq: header.last_seq(),
        };
        let at_block = |failure: ExportFailure| ExportError {
            location: location.clone(),
            failure: Box::new(failure),
        };
        self.check_header(&line, &header).map_err(at_block)?;
        let proof = decode_hashes("proof", &line.proof).map_err(at_block)?;
        let seqs = self.proven_seqs(&line, &header).map_err(at_block)?;

        let mut leaves = Vec::new();
        let mut lines: Option<(u64, u64)> = None;
        for seq in seqs {
            let leaf = match self.bound_leaf(seq) {
                Some(leaf) => leaf,
                None => {
                    let (line_number, leaf) = self.record(seq, header.block_index)?;
                    lines = Some(match lines {
                        None => (line_number, line_number),
                        Some((first, _)) => (first, line_number),
                    });
                    leaf
                }
            };
            leaves.push((seq - header.first_seq, leaf));
        }
        let root = match multiproof_root(u64::from(header.count), &leaves, &proof) {
            Ok(root) => root,
            Err(error) => return Err(at_block(ExportFailure::BlockProof(error))),
        };
        if root != header.merkle_root {
            return Err(at_block(ExportFailure::BlockRoot {
                proven: leaves.len(),
                lines,
            }));
        }
        let hash = block_hash(&header_bytes);
        self.covering.push((header.block_index, hash));
        self.previous_block = Some(PreviousBlock {
            index: header.block_index,
            hash,
            last_seq: header.last_seq(),
        });
        Ok(())
    }

    /// The header's place: its stream, under the checkpoint, after the previous covering
    /// block (linked to it when consecutive).
    fn check_header(&self, line: &BlockLine, header: &BlockHeader) -> Result<(), ExportFailure> {
        if line.block_index != header.block_index {
            return Err(ExportFailure::BlockIndexField {
                line: line.block_index,
                header: header.block_index,
            });
        }
        if header.stream != self.head.stream {
            return Err(ExportFailure::HeaderStream {
                found: header.stream.clone(),
            });
        }
        if header.block_index >= self.checkpoint.tree_size {
            return Err(ExportFailure::BlockBeyondTree {
                block_index: header.block_index,
                tree_size: self.checkpoint.tree_size,
            });
        }
        let Some(previous) = self.previous_block else {
            return Ok(());
        };
        if header.block_index <= previous.index {
            return Err(ExportFailure::BlockOrder {
                block_index: header.block_index,
                previous: previous.index,
            });
        }
        let consecutive = header.block_index == previous.index + 1;
        if matches!(self.plan, Plan::TimeRange { .. }) && !consecutive {
            return Err(ExportFailure::BlocksNotConsecutive {
                block_index: header.block_index,
                previous: previous.index,
            });
        }
        if consecutive && header.prev_block_hash != previous.hash {
            return Err(ExportFailure::ChainLink {
                found: header.prev_block_hash,
                expected: previous.hash,
                previous: previous.index,
            });
        }
        let seqs_follow = if consecutive {
            header.first_seq == previous.last_seq + 1
        } else {
            header.first_seq > previous.last_seq
        };
        if !seqs_follow {
            return Err(ExportFailure::SeqContinuity {
                found: header.first_seq,
                previous_last: previous.last_seq,
            });
        }
        Ok(())
    }

    /// The seqs this block proves, in order.
    /// Lazily: a time range's seqs follow from a header that is not verified yet, whose
    /// count could be anything; memory must follow the records actually read.
    fn proven_seqs(
        &mut self,
        line: &BlockLine,
        header: &BlockHeader,
    ) -> Result<Box<dyn Iterator<Item = u64>>, ExportFailure> {
        match &self.plan {
            Plan::TimeRange { high, .. } => {
                if line.seqs.is_some() {
                    return Err(ExportFailure::BlockSeqs {
                        reason:
                            "a time range's block line lists no seqs (they follow from the range)"
                                .to_string(),
                    });
                }
                let next = self.next_proven;
                if next > *high || next < header.first_seq || next > header.last_seq() {
                    return Err(ExportFailure::BlockMisplaced { next });
                }
                let last = header.last_seq().min(*high);
                self.next_proven = last + 1;
                Ok(Box::new(next..=last))
            }
            Plan::Filter { .. } => {
                let Some(seqs) = &line.seqs else {
                    return Err(ExportFailure::BlockSeqs {
                        reason: "a filter export's block line lists its seqs".to_string(),
                    });
                };
                if seqs.is_empty() {
                    return Err(ExportFailure::BlockSeqs {
                        reason: "empty: a covering block proves at least one event".to_string(),
                    });
                }
                let mut previous: Option<u64> = None;
                for &seq in seqs {
                    if seq < header.first_seq || seq > header.last_seq() {
                        return Err(ExportFailure::BlockSeqs {
                            reason: format!("seq {seq} is not in this block"),
                        });
                    }
                    if previous.is_some_and(|previous| seq <= previous) {
                        return Err(ExportFailure::BlockSeqs {
                            reason: format!("seq {seq} does not increase"),
                        });
                    }
                    previous = Some(seq);
                }
                Ok(Box::new(seqs.clone().into_iter()))
            }
        }
    }

    /// A time range's bound at `seq`, proven from the head instead of a record.
    fn bound_leaf(&self, seq: u64) -> Option<[u8; 32]> {
        let Plan::TimeRange { before, after, .. } = &self.plan else {
            return None;
        };
        [before, after]
            .into_iter()
            .flatten()
            .find(|bound| bound.seq == seq)
            .map(|bound| bound.leaf)
    }

    /// Reads the next record, which must be `expected_seq`, and checks it on its own:
    /// fields, canonical encoding, leaf hash, spelling, tenant, order, range or filter.
    /// Returns its line and leaf hash.
    fn record(
        &mut self,
        expected_seq: u64,
        block_index: u64,
    ) -> Result<(u64, [u8; 32]), ExportError> {
        let raw = match self.records.next_record() {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return fail(
                    ExportLocation::ExportEnd {
                        lines: self.records.lines(),
                    },
                    ExportFailure::LinesMissing {
                        seq: expected_seq,
                        block_index,
                    },
                )
            }
            Err((line, error)) => return Err(read_error(line, error, false)),
        };
        let parsed = match parse_record(&raw.text, self.head.file_format) {
            Ok(parsed) => parsed,
            Err(error) => {
                return fail(
                    ExportLocation::ExportLine {
                        line: raw.line,
                        seq: None,
                    },
                    ExportFailure::Record(error),
                )
            }
        };
        let event = &parsed.event;
        let at = |failure: ExportFailure| ExportError {
            location: ExportLocation::ExportLine {
                line: raw.line,
                seq: Some(event.seq),
            },
            failure: Box::new(failure),
        };
        let leaf = event_leaf_hash(&event.encode());
        if leaf != parsed.leaf_hash {
            return Err(at(ExportFailure::LeafHash {
                leaf_hash: parsed.leaf_hash,
            }));
        }
        let rendered = render_record(&borrowed(event), &leaf, self.head.file_format);
        let spelled = |rendered: &str| rendered.strip_suffix('\n') == Some(raw.text.as_str());
        // A CSV export written before the formula escape has its cells as they are: the
        // one other spelling accepted (the values, and so the hash, are the same).
        let earlier_csv = || {
            self.head.file_format == FileFormat::Csv
                && spelled(&render_csv_unescaped(&borrowed(event), &leaf))
        };
        if !spelled(&rendered) && !earlier_csv() {
            return Err(at(ExportFailure::NotCanonical));
        }
        if event.tenant_id != self.head.tenant_id {
            return Err(at(ExportFailure::RecordTenant {
                found: event.tenant_id.clone(),
                expected: self.head.tenant_id.clone(),
            }));
        }
        if event.stream != self.head.stream {
            return Err(at(ExportFailure::RecordStream {
                found: event.stream.clone(),
                expected: self.head.stream.clone(),
            }));
        }
        if let Some(previous) = self.previous_record {
            if event.seq <= previous.seq {
                return Err(at(ExportFailure::SeqOrder {
                    found: event.seq,
                    previous: previous.seq,
                }));
            }
        }
        if event.seq > expected_seq {
            return Err(at(ExportFailure::SeqMissing {
                missing: expected_seq,
                found: event.seq,
            }));
        }
        if event.seq < expected_seq {
            return Err(at(ExportFailure::SeqNotProven {
                found: event.seq,
                expected: expected_seq,
            }));
        }
        match &self.plan {
            Plan::TimeRange {
                start_ns, end_ns, ..
            } => {
                let outside = start_ns.is_some_and(|start| event.ingested_at < start)
                    || end_ns.is_some_and(|end| event.ingested_at >= end);
                if outside {
                    return Err(at(ExportFailure::OutsideRange {
                        ingested_at: format_time(event.ingested_at),
                        range: range_text(*start_ns, *end_ns),
                    }));
                }
                if let Some(previous) = self.previous_record {
                    if event.ingested_at < previous.ingested_at {
                        return Err(at(ExportFailure::NotMonotonic {
                            ingested_at: format_time(event.ingested_at),
                            previous: format_time(previous.ingested_at),
                        }));
                    }
                }
            }
            Plan::Filter { filter } => {
                if let Some(field) = filter.mismatch(event) {
                    return Err(at(ExportFailure::FilterMismatch { field }));
                }
            }
        }
        self.previous_record = Some(PreviousRecord {
            seq: event.seq,
            ingested_at: event.ingested_at,
        });
        self.records_read += 1;
        (self.progress)(self.records_read);
        Ok((raw.line, leaf))
    }

    /// After the last block line: no record left over, the counts, the range fully
    /// proven, the covering blocks under the checkpoint's root.
    fn finish(
        mut self,
        tree_proof: &[[u8; 32]],
        bundle_lines: u64,
    ) -> Result<ExportSummary, ExportError> {
        match self.records.next_record() {
            Ok(None) => {}
            Ok(Some(raw)) => {
                let seq = parse_record(&raw.text, self.head.file_format)
                    .ok()
                    .map(|parsed| parsed.event.seq);
                return fail(
                    ExportLocation::ExportLine {
                        line: raw.line,
                        seq,
                    },
                    ExportFailure::ExtraLine,
                );
            }
            Err((line, error)) => return Err(read_error(line, error, false)),
        }
        if self.records_read != self.head.events {
            return fail(
                ExportLocation::ExportEnd {
                    lines: self.records.lines(),
                },
                ExportFailure::EventsCount {
                    declared: self.head.events,
                    found: self.records_read,
                },
            );
        }
        if let Plan::TimeRange { high, .. } = self.plan {
            if self.next_proven != high + 1 {
                return fail(
                    ExportLocation::BundleEnd {
                        lines: bundle_lines,
                    },
                    ExportFailure::RangeNotCovered {
                        proven: self.next_proven.saturating_sub(1),
                        high,
                    },
                );
            }
        }
        let tree_size = self.checkpoint.tree_size;
        let at_tree = ExportLocation::StreamTree { tree_size };
        if self.covering.is_empty() {
            // Only an empty filter export has no covering block: nothing to prove.
            if !tree_proof.is_empty() {
                return fail(
                    at_tree,
                    ExportFailure::TreeProof(MultiproofError::ProofTooLong {
                        hashes: tree_proof.len(),
                        used: 0,
                    }),
                );
            }
        } else {
            let root = match multiproof_root(tree_size, &self.covering, tree_proof) {
                Ok(root) => root,
                Err(error) => return fail(at_tree, ExportFailure::TreeProof(error)),
            };
            if root != self.checkpoint.root_hash {
                return fail(at_tree, ExportFailure::TreeRoot);
            }
        }
        let completeness = match self.plan {
            Plan::TimeRange {
                start_ns,
                end_ns,
                first_seq,
                last_seq,
                before,
                after,
                ..
            } => {
                if after.is_none() {
                    // The range claims every event to the checkpoint's end: its last
                    // covering block must be the checkpoint's last, ending at its seq.
                    let last = self
                        .previous_block
                        .expect("a time range has covering blocks");
                    if last.index + 1 != tree_size || last.last_seq != self.checkpoint.last_seq {
                        return fail(
                            at_tree,
                            ExportFailure::LastBlock {
                                last_seq: self.checkpoint.last_seq,
                                block_index: last.index,
                                block_last_seq: last.last_seq,
                                tree_size,
                            },
                        );
                    }
                }
                Completeness::TimeRange {
                    start_ns,
                    end_ns,
                    first_seq,
                    last_seq,
                    before: before.map(|bound| (bound.seq, bound.ingested_at)),
                    after: after.map(|bound| (bound.seq, bound.ingested_at)),
                    open_end: after.is_none(),
                }
            }
            Plan::Filter { filter } => Completeness::Filter { filter },
        };
        Ok(ExportSummary {
            tenant_id: self.head.tenant_id.clone(),
            stream: self.head.stream.clone(),
            file_format: self.head.file_format,
            events: self.records_read,
            blocks: self.covering.len() as u64,
            checkpoint: self.checkpoint,
            completeness,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::builder::assemble_bundle;
    use super::super::{BuildError, ExportBuilder, ExportPlan, SeqSet};
    use super::*;
    use crate::bundle::tests::TestLedger;
    use crate::event::tests::vector_event;
    use crate::event::{ActorType, EventResult};
    use crate::note::tests::{test_signing_key, test_verifier_key};
    use crate::verify::merkle_root;

    const BASE_NS: i64 = 1_735_689_603_000_000_000;
    const ACTIONS: [&str; 4] = [
        "auth.login",
        "auth.mfa.verify",
        "authz.check",
        "role.assign",
    ];

    /// Varied events of `tenant_id`: actors, actions and results change with the seq.
    fn varied_event(tenant_id: &str, seq: u64, ingested_at: i64) -> CanonicalEvent {
        CanonicalEvent {
            stream: format!("{tenant_id}/0"),
            seq,
            ingested_at,
            tenant_id: tenant_id.to_string(),
            event_id: format!("evt_{seq}"),
            occurred_at: ingested_at - 1_000,
            actor_type: if seq.is_multiple_of(5) {
                ActorType::Service
            } else {
                ActorType::User
            },
            actor_id: format!("usr_{}", seq % 3),
            action: ACTIONS[seq as usize % ACTIONS.len()].to_string(),
            result: match seq % 7 {
                0 => EventResult::Failure,
                3 => EventResult::Denied,
                _ => EventResult::Success,
            },
            user_agent: if seq % 4 == 1 {
                "multi\nline, \"quoted\"".to_string()
            } else {
                "curl/8".to_string()
            },
            // A cell a spreadsheet would run: CSV exports escape it.
            request_id: if seq % 3 == 2 {
                format!("=1+{seq}")
            } else {
                vector_event().request_id
            },
            ..vector_event()
        }
    }

    /// A ledger of blocks of the given sizes; `ingested_at(seq)` stamps each event.
    fn make_ledger(
        tenant_id: &str,
        block_sizes: &[u32],
        ingested_at: fn(u64) -> i64,
    ) -> TestLedger {
        let stream = format!("{tenant_id}/0");
        let mut headers = Vec::new();
        let mut events = Vec::new();
        let mut prev_block_hash = [0u8; 32];
        let mut next_seq = 1;
        for (block_index, &count) in block_sizes.iter().enumerate() {
            let block_events: Vec<Vec<u8>> = (next_seq..next_seq + u64::from(count))
                .map(|seq| varied_event(tenant_id, seq, ingested_at(seq)).encode())
                .collect();
            let leaves: Vec<[u8; 32]> = block_events
                .iter()
                .map(|bytes| event_leaf_hash(bytes))
                .collect();
            let last_seq = next_seq + u64::from(count) - 1;
            let header = BlockHeader {
                stream: stream.clone(),
                block_index: block_index as u64,
                prev_block_hash,
                merkle_root: merkle_root(&leaves),
                first_seq: next_seq,
                count,
                sealed_at: ingested_at(last_seq),
            }
            .encode();
            prev_block_hash = block_hash(&header);
            next_seq = last_seq + 1;
            headers.push(header);
            events.push(block_events);
        }
        TestLedger {
            stream,
            headers,
            events,
            signing: test_signing_key(9),
        }
    }

    fn spaced(seq: u64) -> i64 {
        BASE_NS + seq as i64 * 10
    }

    /// Four events per ingest batch share a stamp.
    fn batched(seq: u64) -> i64 {
        BASE_NS + (seq / 4) as i64 * 100
    }

    fn all_events(ledger: &TestLedger) -> Vec<CanonicalEvent> {
        ledger
            .events
            .iter()
            .flatten()
            .map(|bytes| CanonicalEvent::decode(bytes).unwrap())
            .collect()
    }

    /// The plan a correct exporter makes for `[start, end)`, from the reference model.
    fn range_plan(ledger: &TestLedger, start_ns: Option<i64>, end_ns: Option<i64>) -> ExportPlan {
        let events = all_events(ledger);
        let last_seq = events.len() as u64;
        let first = events
            .iter()
            .find(|event| start_ns.is_none_or(|start| event.ingested_at >= start))
            .map_or(last_seq + 1, |event| event.seq);
        let end_seq = events
            .iter()
            .find(|event| end_ns.is_some_and(|end| event.ingested_at >= end))
            .map_or(last_seq + 1, |event| event.seq);
        ExportPlan::TimeRange {
            start_ns,
            end_ns,
            first_seq: first,
            last_seq: end_seq.max(first) - 1,
        }
    }

    fn filter_plan(ledger: &TestLedger, filter: ExportFilter) -> ExportPlan {
        let mut seqs = SeqSet::new();
        for event in all_events(ledger) {
            if filter.mismatch(&event).is_none() {
                seqs.insert(event.seq);
            }
        }
        ExportPlan::Filter { filter, seqs }
    }

    /// Exports with the builder, feeding every block as a node would: (records, bundle).
    fn export(ledger: &TestLedger, plan: ExportPlan, format: FileFormat) -> (Vec<u8>, Vec<u8>) {
        let note = ledger.checkpoint_note(ledger.headers.len());
        let checkpoint = Checkpoint::from_note(&note, &ledger.key()).unwrap();
        let mut builder =
            ExportBuilder::new(format, plan, checkpoint, &note, Vec::new(), Vec::new()).unwrap();
        for (index, header_bytes) in ledger.headers.iter().enumerate() {
            let header = BlockHeader::decode(header_bytes).unwrap();
            if builder.needs_events(&header) {
                builder
                    .add_block(header_bytes, Some(&ledger.events[index]))
                    .unwrap();
            } else {
                builder.add_block::<Vec<u8>>(header_bytes, None).unwrap();
            }
        }
        let (head, records, block_lines) = builder.finish().unwrap();
        let mut bundle = Vec::new();
        assemble_bundle(&head, block_lines.as_slice(), &mut bundle).unwrap();
        (records, bundle)
    }

    fn verify(
        records: &[u8],
        bundle: &[u8],
        key: &VerifierKey,
    ) -> Result<ExportSummary, ExportError> {
        verify_export(records, bundle, key, &mut |_| {})
    }

    fn lines(bytes: &[u8]) -> Vec<String> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .split_inclusive('\n')
            .map(str::to_string)
            .collect()
    }

    fn failure(result: Result<ExportSummary, ExportError>) -> ExportError {
        match result {
            Ok(summary) => panic!("verified, but should not have: {summary:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn every_time_range_verifies_and_is_complete() {
        let ledger = make_ledger("ten_a", &[4, 3, 5, 1, 2], spaced);
        let key = ledger.key();
        let mut bounds: Vec<Option<i64>> = vec![None];
        for seq in 0..=16 {
            bounds.push(Some(spaced(seq) - 5));
            bounds.push(Some(spaced(seq)));
        }
        let mut checked = 0;
        for &start in &bounds {
            for &end in &bounds {
                if let (Some(start), Some(end)) = (start, end) {
                    if end <= start {
                        continue;
                    }
                }
                for format in [FileFormat::Jsonl, FileFormat::Csv] {
                    let plan = range_plan(&ledger, start, end);
                    let ExportPlan::TimeRange {
                        first_seq,
                        last_seq,
                        ..
                    } = plan
                    else {
                        unreachable!()
                    };
                    let (records, bundle) = export(&ledger, plan, format);
                    let summary = verify(&records, &bundle, &key)
                        .unwrap_or_else(|error| panic!("[{start:?}, {end:?}) {format:?}: {error}"));
                    assert_eq!(summary.events, last_seq + 1 - first_seq);
                    let Completeness::TimeRange {
                        first_seq: proven_first,
                        last_seq: proven_last,
                        before,
                        after,
                        open_end,
                        ..
                    } = summary.completeness
                    else {
                        panic!("not a time range")
                    };
                    assert_eq!((proven_first, proven_last), (first_seq, last_seq));
                    assert_eq!(
                        before.map(|(seq, _)| seq),
                        first_seq.checked_sub(1).filter(|seq| *seq > 0)
                    );
                    assert_eq!(after.is_none(), open_end);
                    assert_eq!(open_end, last_seq == 15);
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000, "{checked}");
    }

    #[test]
    fn ranges_over_batches_that_share_a_stamp_verify() {
        let ledger = make_ledger("ten_a", &[6, 6, 6], batched);
        let key = ledger.key();
        for start_batch in 0..5 {
            for end_batch in start_batch + 1..6 {
                let plan = range_plan(
                    &ledger,
                    Some(batched(start_batch * 4)),
                    Some(batched(end_batch * 4)),
                );
                let (records, bundle) = export(&ledger, plan, FileFormat::Jsonl);
                verify(&records, &bundle, &key).unwrap();
            }
        }
        // A plan that splits a batch is refused by the builder: seq 6 shares seq 5's
        // stamp, so it cannot be outside a range that holds seq 5.
        let note = ledger.checkpoint_note(3);
        let checkpoint = Checkpoint::from_note(&note, &key).unwrap();
        let split = ExportPlan::TimeRange {
            start_ns: Some(batched(4)),
            end_ns: Some(batched(8)),
            first_seq: 4,
            last_seq: 5,
        };
        let mut builder = ExportBuilder::new(
            FileFormat::Jsonl,
            split,
            checkpoint,
            &note,
            Vec::new(),
            Vec::new(),
        )
        .unwrap();
        let error = builder
            .add_block(&ledger.headers[0], Some(&ledger.events[0]))
            .unwrap_err();
        assert!(
            matches!(error, BuildError::NotMonotonic { seq: 6, .. }),
            "{error}"
        );
    }

    /// A small middle range of 6 events (seqs 5-10) of a 15-event ledger.
    fn middle(format: FileFormat) -> (TestLedger, Vec<u8>, Vec<u8>) {
        let ledger = make_ledger("ten_a", &[4, 3, 5, 1, 2], spaced);
        let plan = range_plan(&ledger, Some(spaced(5)), Some(spaced(11)));
        let (records, bundle) = export(&ledger, plan, format);
        (ledger, records, bundle)
    }

    #[test]
    fn every_flipped_bit_of_the_records_is_caught() {
        for format in [FileFormat::Jsonl, FileFormat::Csv] {
            let (ledger, records, bundle) = middle(format);
            let key = ledger.key();
            assert_eq!(verify(&records, &bundle, &key).unwrap().events, 6);
            for position in 0..records.len() {
                for bit in 0..8 {
                    let mut edited = records.clone();
                    edited[position] ^= 1 << bit;
                    assert!(
                        verify(&edited, &bundle, &key).is_err(),
                        "{format:?} byte {position} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_flipped_bit_of_the_bundle_is_caught() {
        for format in [FileFormat::Jsonl, FileFormat::Csv] {
            let (ledger, records, bundle) = middle(format);
            let key = ledger.key();
            for position in 0..bundle.len() {
                for bit in 0..8 {
                    let mut edited = bundle.clone();
                    edited[position] ^= 1 << bit;
                    assert!(
                        verify(&records, &edited, &key).is_err(),
                        "{format:?} bundle byte {position} bit {bit}: {}",
                        String::from_utf8_lossy(&edited)
                    );
                }
            }
        }
    }

    #[test]
    fn removed_reordered_and_added_lines_are_named() {
        let (ledger, records, bundle) = middle(FileFormat::Jsonl);
        let key = ledger.key();
        let original = lines(&records);
        assert_eq!(original.len(), 6);

        // A removed line: the seq it held is named, at the line where it is missing.
        for removed in 0..original.len() {
            let mut kept = original.clone();
            kept.remove(removed);
            let error = failure(verify(kept.concat().as_bytes(), &bundle, &key));
            let seq = 5 + removed as u64;
            let expected = if removed + 1 == original.len() {
                format!(
                    "end of the export (after line 5): the export ends, but the bundle proves \
                     seq {seq} in block 2: lines were removed"
                )
            } else {
                format!(
                    "export line {} (seq {}): seq {seq} is missing: this line holds seq {} (a \
                     line was removed, or lines were reordered)",
                    removed + 1,
                    seq + 1,
                    seq + 1
                )
            };
            assert_eq!(error.to_string(), expected);
        }

        // Two lines swapped.
        for first in 0..original.len() - 1 {
            let mut swapped = original.clone();
            swapped.swap(first, first + 1);
            let error = failure(verify(swapped.concat().as_bytes(), &bundle, &key));
            assert!(
                matches!(*error.failure, ExportFailure::SeqMissing { .. }),
                "{error}"
            );
            assert_eq!(
                error.location,
                ExportLocation::ExportLine {
                    line: first as u64 + 1,
                    seq: Some(5 + first as u64 + 1)
                }
            );
        }

        // A line repeated, and a line added at the end.
        let mut repeated = original.clone();
        repeated.insert(3, original[2].clone());
        let error = failure(verify(repeated.concat().as_bytes(), &bundle, &key));
        assert_eq!(
            error.to_string(),
            "export line 4 (seq 7): seq 7 follows seq 7: lines are out of order or repeated"
        );
        let other = make_ledger("ten_a", &[4, 3, 5, 1, 2], spaced);
        let plan = range_plan(&other, Some(spaced(11)), Some(spaced(12)));
        let (next_record, _) = export(&other, plan, FileFormat::Jsonl);
        let added = [records.clone(), next_record].concat();
        let error = failure(verify(&added, &bundle, &key));
        assert_eq!(
            error.to_string(),
            "export line 7 (seq 11): no block of the bundle proves this line (an added line)"
        );
    }

    #[test]
    fn an_edited_field_is_named_even_with_its_leaf_hash_recomputed() {
        let (ledger, records, bundle) = middle(FileFormat::Jsonl);
        let key = ledger.key();
        let original = lines(&records);
        let edited_line = original[2].replace(
            "\"actor\":{\"type\":\"USER\"",
            "\"actor\":{\"type\":\"SYSTEM\"",
        );
        assert_ne!(edited_line, original[2]);
        let mut edited = original.clone();
        edited[2] = edited_line.clone();
        let error = failure(verify(edited.concat().as_bytes(), &bundle, &key));
        assert!(
            matches!(*error.failure, ExportFailure::LeafHash { .. }),
            "{error}"
        );
        assert_eq!(
            error.location,
            ExportLocation::ExportLine {
                line: 3,
                seq: Some(7)
            }
        );

        // The editor recomputes the leaf hash: the line is consistent, the block is not.
        let parsed = parse_record(edited_line.trim_end(), FileFormat::Jsonl).unwrap();
        let leaf = event_leaf_hash(&parsed.event.encode());
        edited[2] = render_record(&borrowed(&parsed.event), &leaf, FileFormat::Jsonl);
        let error = failure(verify(edited.concat().as_bytes(), &bundle, &key));
        // Blocks hold seqs 1-4, 5-7, 8-12, ...: the bundle's lines 2 to 4 are blocks 0 (for
        // the bound, seq 4) to 2, and line 3 of the export, seq 7, is in block 1.
        assert_eq!(
            error.to_string(),
            "bundle line 3 (block 1, seqs 5\u{2013}7): the 3 proven events (export lines 1\u{2013}3) \
             and the block proof do not give the header's merkle root: an event was edited, or \
             a line removed, added or moved"
        );

        // A reformatted line (same values, another spelling) is not the export's.
        let mut reformatted = original.clone();
        reformatted[0] = original[0].replacen(",", ", ", 1);
        let error = failure(verify(reformatted.concat().as_bytes(), &bundle, &key));
        assert!(
            matches!(*error.failure, ExportFailure::NotCanonical),
            "{error}"
        );
    }

    /// A CSV export written before the formula escape (its formula cells as they are)
    /// still verifies: the values, and so the hashes, are the same, and that spelling is
    /// the one other the verifier accepts.
    #[test]
    fn a_csv_export_from_before_the_formula_escape_still_verifies() {
        let (ledger, records, bundle) = middle(FileFormat::Csv);
        let key = ledger.key();
        let text = String::from_utf8(records).unwrap();
        assert!(text.contains(",'=1+"), "formula cells are escaped: {text}");
        assert!(verify(text.as_bytes(), &bundle, &key).is_ok());
        let earlier = text.replace(",'=1+", ",=1+");
        verify(earlier.as_bytes(), &bundle, &key).expect("the earlier spelling verifies");
        // Any other respelling is still refused.
        let respelled = text.replacen(",'=1+", ",''=1+", 1);
        assert!(verify(respelled.as_bytes(), &bundle, &key).is_err());
    }

    #[test]
    fn another_tenants_or_ranges_bundle_and_other_keys_fail() {
        let (ledger_a, records_a, bundle_a) = middle(FileFormat::Jsonl);
        let ledger_b = make_ledger("ten_b", &[4, 3, 5, 1, 2], spaced);
        let plan = range_plan(&ledger_b, Some(spaced(5)), Some(spaced(11)));
        let (records_b, bundle_b) = export(&ledger_b, plan, FileFormat::Jsonl);
        // Both ledgers sign with the same test key: only the contents tell them apart.
        let key = ledger_a.key();
        assert!(verify(&records_b, &bundle_b, &key).is_ok());
        let error = failure(verify(&records_a, &bundle_b, &key));
        assert_eq!(
            error.to_string(),
            "export line 1 (seq 5): the event belongs to tenant ten_a, the export is of tenant ten_b"
        );
        let error = failure(verify(&records_b, &bundle_a, &key));
        assert!(
            matches!(*error.failure, ExportFailure::RecordTenant { .. }),
            "{error}"
        );

        // The same tenant's bundle of another range.
        let wider = range_plan(&ledger_a, Some(spaced(4)), Some(spaced(11)));
        let (_, bundle_wider) = export(&ledger_a, wider, FileFormat::Jsonl);
        let error = failure(verify(&records_a, &bundle_wider, &key));
        assert!(
            matches!(
                *error.failure,
                ExportFailure::SeqNotProven { .. } | ExportFailure::SeqMissing { .. }
            ),
            "{error}"
        );

        // Another key.
        let other = test_verifier_key("trail.local", &test_signing_key(10));
        let error = failure(verify(&records_a, &bundle_a, &other));
        assert_eq!(error.location, ExportLocation::BundleHead);
        assert!(
            error.to_string().contains("has no signature by key"),
            "{error}"
        );

        // A CSV export checked as JSON lines (the head says which it is).
        let (_, records_csv, _) = middle(FileFormat::Csv);
        let error = failure(verify(&records_csv, &bundle_a, &key));
        assert!(
            matches!(*error.failure, ExportFailure::Record(_)),
            "{error}"
        );
    }

    #[test]
    fn bundle_edits_are_named() {
        let (ledger, records, bundle) = middle(FileFormat::Jsonl);
        let key = ledger.key();
        let bundle_lines = lines(&bundle);
        let head: BundleHead = serde_json::from_str(&bundle_lines[0]).unwrap();
        assert_eq!(head.blocks, 3);
        let rewrite = |edit: &dyn Fn(&mut BundleHead)| {
            let mut edited = head.clone();
            edit(&mut edited);
            let mut text = serde_json::to_string(&edited).unwrap();
            text.push('\n');
            [text, bundle_lines[1..].concat()].concat()
        };

        // A block line removed, or the head's count of them changed.
        let fewer = [
            bundle_lines[0].clone(),
            bundle_lines[1].clone(),
            bundle_lines[3].clone(),
        ]
        .concat();
        let error = failure(verify(&records, fewer.as_bytes(), &key));
        assert!(
            matches!(
                *error.failure,
                ExportFailure::ExtraBundleLine { .. } | ExportFailure::BlocksNotConsecutive { .. }
            ),
            "{error}"
        );
        let error = failure(verify(
            &records,
            rewrite(&|head| head.blocks = 2).as_bytes(),
            &key,
        ));
        assert!(
            matches!(
                *error.failure,
                ExportFailure::ExtraBundleLine { declared: 2 }
            ),
            "{error}"
        );

        // The range widened or narrowed: the bounds no longer fit.
        let widened = rewrite(&|head| {
            if let Selection::TimeRange {
                ingested_at_end, ..
            } = &mut head.selection
            {
                *ingested_at_end = Some(format_time(spaced(12)));
            }
        });
        let error = failure(verify(&records, widened.as_bytes(), &key));
        assert_eq!(error.location, ExportLocation::BundleHead);
        assert!(
            error.to_string().contains("belongs in the range"),
            "{error}"
        );
        let narrowed = rewrite(&|head| {
            if let Selection::TimeRange {
                ingested_at_start, ..
            } = &mut head.selection
            {
                *ingested_at_start = Some(format_time(spaced(6)));
            }
        });
        let error = failure(verify(&records, narrowed.as_bytes(), &key));
        assert!(
            matches!(*error.failure, ExportFailure::OutsideRange { .. }),
            "{error}"
        );

        // The claimed last seq lowered along with the count, dropping the last line.
        let shorter = rewrite(&|head| {
            head.events = 5;
            if let Selection::TimeRange { last_seq, .. } = &mut head.selection {
                *last_seq = 9;
            }
        });
        let error = failure(verify(
            lines(&records)[..5].concat().as_bytes(),
            shorter.as_bytes(),
            &key,
        ));
        assert!(
            matches!(*error.failure, ExportFailure::Bound { which: "after", .. }),
            "{error}"
        );

        // The tree proof edited.
        let tree = rewrite(&|head| head.tree_proof[0] = "00".repeat(32));
        let error = failure(verify(&records, tree.as_bytes(), &key));
        assert_eq!(
            error.to_string(),
            "stream tree (checkpoint of 5 blocks): the covering blocks and the tree proof do not \
             give the checkpoint's root: a block header was altered, or a block is not at its \
             index under this checkpoint"
        );
    }

    #[test]
    fn the_builder_refuses_what_a_node_should_not_serve() {
        let ledger = make_ledger("ten_a", &[4, 3, 5], spaced);
        let key = ledger.key();
        let note = ledger.checkpoint_note(3);
        let checkpoint = Checkpoint::from_note(&note, &key).unwrap();
        let builder = |plan: ExportPlan| {
            ExportBuilder::new(
                FileFormat::Jsonl,
                plan,
                checkpoint.clone(),
                &note,
                Vec::new(),
                Vec::new(),
            )
            .unwrap()
        };
        let whole = || range_plan(&ledger, None, None);

        // An event altered in the block: the merkle root does not match.
        let mut altered = ledger.events[1].clone();
        altered[0][40] ^= 1;
        let mut export = builder(whole());
        export
            .add_block(&ledger.headers[0], Some(&ledger.events[0]))
            .unwrap();
        let error = export
            .add_block(&ledger.headers[1], Some(&altered))
            .unwrap_err();
        assert!(error.to_string().starts_with("block 1: "), "{error}");

        // An event missing from the block.
        let mut export = builder(whole());
        let error = export
            .add_block(&ledger.headers[0], Some(&ledger.events[0][..3]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "block 0: 3 events served, the header counts 4"
        );

        // Blocks out of order, and too few of them.
        let mut export = builder(whole());
        let error = export
            .add_block(&ledger.headers[1], Some(&ledger.events[1]))
            .unwrap_err();
        assert_eq!(error.to_string(), "block 0: the node served block 1 here");
        let mut export = builder(whole());
        export
            .add_block(&ledger.headers[0], Some(&ledger.events[0]))
            .unwrap();
        assert!(matches!(
            export.finish().unwrap_err(),
            BuildError::BlocksCount {
                blocks: 1,
                tree_size: 3
            }
        ));

        // A plan that does not fit the checkpoint.
        let beyond = ExportPlan::TimeRange {
            start_ns: None,
            end_ns: None,
            first_seq: 1,
            last_seq: 13,
        };
        assert!(matches!(
            ExportBuilder::new(
                FileFormat::Jsonl,
                beyond,
                checkpoint.clone(),
                &note,
                Vec::new(),
                Vec::new()
            ),
            Err(BuildError::Plan(_))
        ));
    }

    #[test]
    fn filtered_exports_prove_each_event() {
        let ledger = make_ledger("ten_a", &[4, 3, 5, 1, 2, 7, 9], spaced);
        let key = ledger.key();
        let filters = [
            ExportFilter {
                action: Some("auth.*".to_string()),
                ..ExportFilter::default()
            },
            ExportFilter {
                actor_id: Some("usr_1".to_string()),
                result: Some("SUCCESS".to_string()),
                ..ExportFilter::default()
            },
            ExportFilter {
                actor_type: Some("SERVICE".to_string()),
                occurred_at_start: Some(format_time(spaced(10))),
                ..ExportFilter::default()
            },
            ExportFilter {
                action: Some("nothing.*".to_string()),
                ..ExportFilter::default()
            },
        ];
        for filter in filters {
            for format in [FileFormat::Jsonl, FileFormat::Csv] {
                let plan = filter_plan(&ledger, filter.clone());
                let ExportPlan::Filter { seqs, .. } = &plan else {
                    unreachable!()
                };
                let expected = seqs.len();
                let (records, bundle) = export(&ledger, plan, format);
                let summary = verify(&records, &bundle, &key)
                    .unwrap_or_else(|error| panic!("{filter:?} {format:?}: {error}"));
                assert_eq!(summary.events, expected);
                assert_eq!(
                    summary.completeness,
                    Completeness::Filter {
                        filter: filter.clone()
                    }
                );
                if expected == 0 {
                    assert_eq!(summary.blocks, 0);
                    continue;
                }
                // Any record removed is caught.
                let start = usize::from(format == FileFormat::Csv);
                let original: Vec<String> = String::from_utf8(records.clone())
                    .unwrap()
                    .split_inclusive('\n')
                    .map(str::to_string)
                    .collect();
                if format == FileFormat::Jsonl {
                    for removed in start..original.len() {
                        let mut kept = original.clone();
                        kept.remove(removed);
                        assert!(
                            verify(kept.concat().as_bytes(), &bundle, &key).is_err(),
                            "{filter:?} line {removed}"
                        );
                    }
                }
            }
        }

        // An event that does not match the recorded filter is named.
        let plan = filter_plan(
            &ledger,
            ExportFilter {
                action: Some("auth.*".to_string()),
                ..ExportFilter::default()
            },
        );
        let (records, bundle) = export(&ledger, plan, FileFormat::Jsonl);
        let mut bundle_lines = lines(&bundle);
        let mut head: BundleHead = serde_json::from_str(&bundle_lines[0]).unwrap();
        head.selection = Selection::Filter {
            filter: ExportFilter {
                action: Some("auth.login".to_string()),
                ..ExportFilter::default()
            },
        };
        bundle_lines[0] = serde_json::to_string(&head).unwrap() + "\n";
        let error = failure(verify(&records, bundle_lines.concat().as_bytes(), &key));
        assert_eq!(
            error.to_string(),
            "export line 1 (seq 1): the event does not match the export's filter on action"
        );
    }
}
