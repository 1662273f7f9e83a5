//! Writing an export: the records and the bundle's block lines, from the stream's blocks
//! fed in order. Pure: the caller fetches the blocks and owns the files.
//!
//! The caller feeds every block header of the checkpoint's tree, block 0 first (the
//! stream-tree multiproof needs every block hash), and the events of the blocks that
//! [`ExportBuilder::needs_events`] asks for. Memory: one block's events at a time, the
//! O(log n) rows of two multiproof builders, the stream-tree proof, and for a filter
//! the [`SeqSet`] of the selected seqs.

use std::io::{self, Read, Write};

use super::multiproof::MultiproofBuilder;
use super::record::{csv_header_line, render_record};
use super::seq_set::SeqSet;
use super::{
    encode_base64, BlockLine, BundleHead, ExportFilter, FileFormat, Selection, EXPORT_FORMAT_V1,
};
use crate::block::{block_hash, BlockHeader};
use crate::checkpoint::{format_time, Checkpoint};
use crate::event::{event_leaf_hash, CanonicalEventRef};

/// What to export.
#[derive(Debug, Clone)]
pub enum ExportPlan {
    /// Seqs `first_seq ..= last_seq` (none when `last_seq = first_seq - 1`): the events
    /// with `start <= ingested_at < end`, found by the caller. Their neighbours at
    /// `first_seq - 1` and `last_seq + 1`, where the checkpoint covers them, are proven
    /// too, as bounds.
    TimeRange {
        start_ns: Option<i64>,
        end_ns: Option<i64>,
        first_seq: u64,
        last_seq: u64,
    },
    /// The seqs the node's query found for `filter`, at most the checkpoint's last seq.
    Filter { filter: ExportFilter, seqs: SeqSet },
}

/// Why an export could not be written. `Node` means the node served something that does
/// not hold together; the message says what.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot write the export: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Plan(String),
    #[error("block {block_index}: {reason}")]
    Node { block_index: u64, reason: String },
    #[error(
        "seq {seq}: ingested at {ingested_at}, which is {reason}: the stream's ingested_at \
         is not monotonic there (events written before the node kept it monotonic?)"
    )]
    NotMonotonic {
        seq: u64,
        ingested_at: String,
        reason: String,
    },
    #[error("the node served {blocks} blocks, the checkpoint covers {tree_size}")]
    BlocksCount { blocks: u64, tree_size: u64 },
    #[error("the node's block hashes do not give the checkpoint's stream-tree root")]
    TreeRoot,
}

/// Writes an export's records to `records` and its bundle's block lines to `block_lines`;
/// [`ExportBuilder::finish`] gives the bundle head. See the module documentation.
pub struct ExportBuilder<W, B> {
    tenant_id: String,
    stream: String,
    format: FileFormat,
    plan: ExportPlan,
    checkpoint: Checkpoint,
    note: String,
    records: W,
    block_lines: B,
    stream_tree: MultiproofBuilder,
    next_block_index: u64,
    next_seq: u64,
    prev_block_hash: [u8; 32],
    events_written: u64,
    covering_blocks: u64,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
}

fn node_error(block_index: u64, reason: impl Into<String>) -> BuildError {
    BuildError::Node {
        block_index,
        reason: reason.into(),
    }
}

impl<W: Write, B: Write> ExportBuilder<W, B> {
    /// `checkpoint` is the parsed, verified `note`; the plan must fit it.
    pub fn new(
        format: FileFormat,
        plan: ExportPlan,
        checkpoint: Checkpoint,
        note: &str,
        mut records: W,
        block_lines: B,
    ) -> Result<ExportBuilder<W, B>, BuildError> {
        match &plan {
            ExportPlan::TimeRange {
                start_ns,
                end_ns,
                first_seq,
                last_seq,
            } => {
                if *first_seq == 0 || last_seq.saturating_add(1) < *first_seq {
                    return Err(BuildError::Plan(format!(
                        "seqs {first_seq}..={last_seq} are not a run of seqs from 1"
                    )));
                }
                if *last_seq > checkpoint.last_seq {
                    return Err(BuildError::Plan(format!(
                        "seq {last_seq} is beyond the checkpoint's last seq {}",
                        checkpoint.last_seq
                    )));
                }
                if let (Some(start), Some(end)) = (start_ns, end_ns) {
                    if end <= start {
                        return Err(BuildError::Plan(
                            "the end time must be after the start time".to_string(),
                        ));
                    }
                }
                if checkpoint.last_seq == 0 {
                    return Err(BuildError::Plan(
                        "the checkpoint covers no event: there is nothing to prove".to_string(),
                    ));
                }
            }
            ExportPlan::Filter { filter, seqs } => {
                if let Err((field, reason)) = filter.check() {
                    return Err(BuildError::Plan(format!("filter {field}: {reason}")));
                }
                if seqs.any_in(checkpoint.last_seq.saturating_add(1), u64::MAX) || seqs.contains(0)
                {
                    return Err(BuildError::Plan(
                        "a selected seq is outside the checkpoint".to_string(),
                    ));
                }
            }
        }
        if format == FileFormat::Csv {
            records.write_all(csv_header_line().as_bytes())?;
        }
        Ok(ExportBuilder {
            tenant_id: checkpoint.tenant_id.clone(),
            stream: checkpoint.stream.clone(),
            format,
            plan,
            note: note.to_string(),
            checkpoint,
            records,
            block_lines,
            stream_tree: MultiproofBuilder::new(),
            next_block_index: 0,
            next_seq: 1,
            prev_block_hash: [0; 32],
            events_written: 0,
            covering_blocks: 0,
            before: None,
            after: None,
        })
    }

    /// Records the export will hold.
    pub fn events_expected(&self) -> u64 {
        match &self.plan {
            ExportPlan::TimeRange {
                first_seq,
                last_seq,
                ..
            } => last_seq + 1 - first_seq,
            ExportPlan::Filter { seqs, .. } => seqs.len(),
        }
    }

    /// Records written so far.
    pub fn events_written(&self) -> u64 {
        self.events_written
    }

    /// Block headers fed so far.
    pub fn blocks(&self) -> u64 {
        self.next_block_index
    }

    /// The seqs the bundle proves (exported, and for a time range its bounds).
    fn proven_range(&self) -> Option<(u64, u64)> {
        match &self.plan {
            ExportPlan::TimeRange {
                first_seq,
                last_seq,
                ..
            } => Some((
                first_seq.saturating_sub(1).max(1),
                (last_seq + 1).min(self.checkpoint.last_seq),
            )),
            ExportPlan::Filter { .. } => None,
        }
    }

    fn is_proven(&self, seq: u64) -> bool {
        match &self.plan {
            ExportPlan::TimeRange { .. } => {
                let (low, high) = self.proven_range().expect("a time range");
                seq >= low && seq <= high
            }
            ExportPlan::Filter { seqs, .. } => seqs.contains(seq),
        }
    }

    fn is_exported(&self, seq: u64) -> bool {
        match &self.plan {
            ExportPlan::TimeRange {
                first_seq,
                last_seq,
                ..
            } => seq >= *first_seq && seq <= *last_seq,
            ExportPlan::Filter { seqs, .. } => seqs.contains(seq),
        }
    }

    /// Whether the block holds a proven seq, so its events are needed.
    pub fn needs_events(&self, header: &BlockHeader) -> bool {
        match &self.plan {
            ExportPlan::TimeRange { .. } => {
                let (low, high) = self.proven_range().expect("a time range");
                header.first_seq <= high && header.last_seq() >= low
            }
            ExportPlan::Filter { seqs, .. } => seqs.any_in(header.first_seq, header.last_seq()),
        }
    }

    /// Checks a time range's event against the range while writing, so a stream whose
    /// `ingested_at` is not monotonic is reported here rather than by the verifier only.
    fn check_time(&self, seq: u64, ingested_at: i64) -> Result<(), BuildError> {
        let ExportPlan::TimeRange {
            start_ns,
            end_ns,
            first_seq,
            last_seq,
        } = &self.plan
        else {
            return Ok(());
        };
        let reason = if seq + 1 == *first_seq {
            start_ns
                .filter(|start| ingested_at >= *start)
                .map(|_| "not before the range's start, yet the range starts after it")
        } else if seq == last_seq + 1 {
            end_ns
                .filter(|end| ingested_at < *end)
                .map(|_| "before the range's end, yet the range ends before it")
        } else if start_ns.is_some_and(|start| ingested_at < start)
            || end_ns.is_some_and(|end| ingested_at >= end)
        {
            Some("outside the range, yet between events inside it")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(BuildError::NotMonotonic {
                seq,
                ingested_at: format_time(ingested_at),
                reason: reason.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// Feeds the next block: its header bytes and, when [`Self::needs_events`] says so,
    /// its events' canonical bytes in seq order. Returns the records written.
    pub fn add_block<E>(
        &mut self,
        header_bytes: &[u8],
        events: Option<&[E]>,
    ) -> Result<u64, BuildError>
    where
        E: AsRef<[u8]>,
    {
        let block_index = self.next_block_index;
        let header = BlockHeader::decode(header_bytes)
            .map_err(|error| node_error(block_index, format!("header does not decode: {error}")))?;
        if header.block_index != block_index {
            return Err(node_error(
                block_index,
                format!("the node served block {} here", header.block_index),
            ));
        }
        if header.stream != self.stream {
            return Err(node_error(
                block_index,
                format!("header names stream {}", header.stream),
            ));
        }
        if header.prev_block_hash != self.prev_block_hash || header.first_seq != self.next_seq {
            return Err(node_error(
                block_index,
                "header does not follow the previous block (prev_block_hash or first_seq)",
            ));
        }
        let hash = block_hash(header_bytes);
        let covering = self.needs_events(&header);
        let mut written = 0u64;
        if covering {
            let Some(events) = events else {
                return Err(node_error(block_index, "its events are needed"));
            };
            if events.len() as u64 != u64::from(header.count) {
                return Err(node_error(
                    block_index,
                    format!(
                        "{} events served, the header counts {}",
                        events.len(),
                        header.count
                    ),
                ));
            }
            let mut block_tree = MultiproofBuilder::new();
            let mut exported_seqs = Vec::new();
            for (position, bytes) in events.iter().enumerate() {
                let bytes = bytes.as_ref();
                let seq = header.first_seq + position as u64;
                let proven = self.is_proven(seq);
                let leaf = event_leaf_hash(bytes);
                block_tree.push(leaf, proven);
                if !proven {
                    continue;
                }
                let event = CanonicalEventRef::decode(bytes).map_err(|error| {
                    node_error(block_index, format!("seq {seq} does not decode: {error}"))
                })?;
                if event.seq != seq
                    || event.stream != self.stream
                    || event.tenant_id != self.tenant_id
                {
                    return Err(node_error(
                        block_index,
                        format!(
                            "position {position} holds seq {} of stream {} (tenant {}), not seq {seq}",
                            event.seq, event.stream, event.tenant_id
                        ),
                    ));
                }
                self.check_time(seq, event.ingested_at)?;
                if self.is_exported(seq) {
                    self.records
                        .write_all(render_record(&event, &leaf, self.format).as_bytes())?;
                    written += 1;
                    exported_seqs.push(seq);
                } else if self.is_before(seq) {
                    self.before = Some(bytes.to_vec());
                } else {
                    self.after = Some(bytes.to_vec());
                }
            }
            let block_proof = block_tree.finish();
            if block_proof.root != header.merkle_root {
                return Err(node_error(
                    block_index,
                    "the events served do not hash to the header's merkle root",
                ));
            }
            let line = BlockLine {
                block_index,
                header: encode_base64(header_bytes),
                seqs: match self.plan {
                    ExportPlan::Filter { .. } => Some(exported_seqs),
                    ExportPlan::TimeRange { .. } => None,
                },
                proof: block_proof.hashes.iter().map(hex::encode).collect(),
            };
            let mut text = serde_json::to_string(&line).expect("a block line serializes");
            text.push('\n');
            self.block_lines.write_all(text.as_bytes())?;
            self.covering_blocks += 1;
            self.events_written += written;
        }
        self.stream_tree.push(hash, covering);
        self.prev_block_hash = hash;
        self.next_seq = header.last_seq() + 1;
        self.next_block_index += 1;
        Ok(written)
    }

    fn is_before(&self, seq: u64) -> bool {
        matches!(self.plan, ExportPlan::TimeRange { first_seq, .. } if seq + 1 == first_seq)
    }

    /// After the last block: checks that everything planned was written and gives the
    /// bundle head (write it first, then the block lines: [`assemble_bundle`]).
    pub fn finish(mut self) -> Result<(BundleHead, W, B), BuildError> {
        if self.next_block_index != self.checkpoint.tree_size {
            return Err(BuildError::BlocksCount {
                blocks: self.next_block_index,
                tree_size: self.checkpoint.tree_size,
            });
        }
        if self.next_seq - 1 != self.checkpoint.last_seq {
            return Err(BuildError::Plan(format!(
                "the blocks end at seq {}, the checkpoint says seq {}",
                self.next_seq - 1,
                self.checkpoint.last_seq
            )));
        }
        let expected = self.events_expected();
        if self.events_written != expected {
            return Err(BuildError::Plan(format!(
                "{} events written, {expected} planned",
                self.events_written
            )));
        }
        let tree_proof = if self.stream_tree.is_empty() {
            Vec::new()
        } else {
            let proof = self.stream_tree.finish();
            if proof.root != self.checkpoint.root_hash {
                return Err(BuildError::TreeRoot);
            }
            if proof.proven == 0 {
                Vec::new()
            } else {
                proof.hashes.iter().map(hex::encode).collect()
            }
        };
        let selection = match &self.plan {
            ExportPlan::TimeRange {
                start_ns,
                end_ns,
                first_seq,
                last_seq,
            } => {
                if (*first_seq > 1) != self.before.is_some()
                    || (*last_seq < self.checkpoint.last_seq) != self.after.is_some()
                {
                    return Err(BuildError::Plan(
                        "a bound event of the range was not among the blocks".to_string(),
                    ));
                }
                Selection::TimeRange {
                    ingested_at_start: start_ns.map(format_time),
                    ingested_at_end: end_ns.map(format_time),
                    first_seq: *first_seq,
                    last_seq: *last_seq,
                    before: self.before.as_deref().map(encode_base64),
                    after: self.after.as_deref().map(encode_base64),
                }
            }
            ExportPlan::Filter { filter, .. } => Selection::Filter {
                filter: filter.clone(),
            },
        };
        self.records.flush()?;
        self.block_lines.flush()?;
        let head = BundleHead {
            format: EXPORT_FORMAT_V1.to_string(),
            tenant_id: self.tenant_id,
            stream: self.stream,
            file_format: self.format,
            events: self.events_written,
            blocks: self.covering_blocks,
            selection,
            checkpoint: self.note,
            tree_proof,
        };
        Ok((head, self.records, self.block_lines))
    }
}

/// Writes the bundle: the head line, then the block lines as the builder wrote them.
pub fn assemble_bundle<R: Read, W: Write>(
    head: &BundleHead,
    mut block_lines: R,
    mut out: W,
) -> io::Result<()> {
    let mut text = serde_json::to_string(head).expect("a bundle head serializes");
    text.push('\n');
    out.write_all(text.as_bytes())?;
    io::copy(&mut block_lines, &mut out)?;
    out.flush()
}
