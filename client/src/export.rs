//! Exports of a tenant's events with proof (`trail-export-v1`, docs/PROOFS.md,
//! "Exports"). Pure: no network; files are read and written through `BufRead` and
//! `Write`.
//!
//! An export is two files:
//!
//! - the **records**: one event per JSON line or CSV row, in seq order, each holding
//!   every field of its canonical encoding and its leaf hash ([`record`]);
//! - the **proof bundle** (`<records>.proof.jsonl`), JSON lines: a head with the signed
//!   checkpoint, what was selected and a multiproof of the covering blocks under the
//!   checkpoint's root, then one line per covering block with its header and a
//!   multiproof of the exported events (and range bounds) under the block's merkle root.
//!
//! Two selections:
//!
//! - **time range** (no other filter): every event with `start <= ingested_at < end`.
//!   `ingested_at` never decreases along a stream, so these are one contiguous run of
//!   seqs; the bundle also carries the events just outside it (seq first - 1 and last + 1,
//!   when they exist) with their proofs, showing they are outside the range. The export
//!   is then provably *complete*: nothing in the range is missing, nothing was added.
//! - **filter** (actor, action, resource, result, request, occurred_at window): the
//!   events the node's query found, each proven included; completeness is not proven.
//!
//! [`ExportBuilder`] writes both files from the blocks the caller fetches, in constant
//! memory; [`verify_export`] checks them offline, streaming, and names the first problem
//! (export line and seq, bundle line and block, or the check that failed).

mod builder;
mod multiproof;
pub mod record;
mod seq_set;
mod verifier;

use serde::{Deserialize, Serialize};

pub use builder::{assemble_bundle, BuildError, ExportBuilder, ExportPlan};
pub use multiproof::{multiproof_root, Multiproof, MultiproofBuilder, MultiproofError};
pub use seq_set::SeqSet;
pub use verifier::{
    verify_export, Completeness, ExportError, ExportFailure, ExportLocation, ExportSummary,
};

use crate::event::CanonicalEvent;
use record::{actor_type_name, parse_actor_type, parse_result, result_name};

/// The bundle's `format` value.
pub const EXPORT_FORMAT_V1: &str = "trail-export-v1";

/// The longest record accepted. An event is bounded by the node (8 KiB of metadata, short
/// identifiers), ~1 KiB typically; 1 MiB refuses a runaway line before it fills memory.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024;

/// The longest bundle line accepted. A block line holds at most one hash and one seq per
/// event of its block (blocks hold at most 65,536 events: ~5 MiB); the head holds the
/// stream-tree multiproof, at most one hash per block not covered, which for a filtered
/// export over a very long stream of tiny blocks may reach tens of MiB.
pub const BUNDLE_LINE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// The suffix of the proof bundle beside an export file.
pub const BUNDLE_SUFFIX: &str = ".proof.jsonl";

/// How the records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV with a header row, rows ending in `\n`; formula cells escaped with
    /// a leading `'` (docs/PROOFS.md, "The records file").
    Csv,
}

impl FileFormat {
    pub fn name(self) -> &'static str {
        match self {
            FileFormat::Jsonl => "jsonl",
            FileFormat::Csv => "csv",
        }
    }
}

/// The first line of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHead {
    /// [`EXPORT_FORMAT_V1`].
    pub format: String,
    pub tenant_id: String,
    /// `{tenant_id}/{index}`.
    pub stream: String,
    /// The records file's format.
    pub file_format: FileFormat,
    /// Records in the export.
    pub events: u64,
    /// Block lines after this one.
    pub blocks: u64,
    pub selection: Selection,
    /// The signed checkpoint note, verbatim.
    pub checkpoint: String,
    /// Hex hashes: the multiproof of the covering blocks' hashes (at their block
    /// indexes) under the checkpoint's stream-tree root.
    pub tree_proof: Vec<String>,
}

/// What the export holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Selection {
    /// Every event of the stream with `ingested_at_start <= ingested_at <
    /// ingested_at_end` (either bound may be absent), up to the checkpoint: seqs
    /// `first_seq ..= last_seq` (`last_seq = first_seq - 1` when there are none).
    TimeRange {
        /// RFC 3339 UTC, nine fraction digits; inclusive.
        ingested_at_start: Option<String>,
        /// RFC 3339 UTC, nine fraction digits; exclusive.
        ingested_at_end: Option<String>,
        first_seq: u64,
        last_seq: u64,
        /// Standard base64 of the canonical bytes of seq `first_seq - 1`, when
        /// `first_seq > 1`: its `ingested_at` is before the start.
        before: Option<String>,
        /// Standard base64 of the canonical bytes of seq `last_seq + 1`, when the
        /// checkpoint covers it: its `ingested_at` is at or after the end.
        after: Option<String>,
    },
    /// The events matching a filter, as the node's query selected them.
    Filter { filter: ExportFilter },
}

/// One line per covering block, in block order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockLine {
    pub block_index: u64,
    /// Standard base64 of the block header bytes (version 1).
    pub header: String,
    /// Filter exports: the exported seqs in this block, increasing. Absent for a time
    /// range, whose seqs in each block follow from the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seqs: Option<Vec<u64>>,
    /// Hex hashes: the multiproof of the proven events' leaf hashes (at their positions
    /// in the block) under the header's merkle root; empty when all are proven.
    pub proof: Vec<String>,
}

/// A filter as recorded in a bundle; absent fields match anything. Same meaning as the
/// node's query filter (docs/QUERY.md), which selected the events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    /// `USER`, `SERVICE` or `SYSTEM`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_type: Option<String>,
    /// Exact, or a prefix ending in `.*` (`auth.*` matches `auth.login`, not `authz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// `SUCCESS`, `FAILURE` or `DENIED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// On `occurred_at`, inclusive; RFC 3339 UTC, nine fraction digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at_start: Option<String>,
    /// On `occurred_at`, exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at_end: Option<String>,
}

impl ExportFilter {
    /// True when no field is set: such an export is a time range, not a filter.
    pub fn is_empty(&self) -> bool {
        *self == ExportFilter::default()
    }

    /// Checks the values; the error names the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(actor_type) = &self.actor_type {
            if parse_actor_type(actor_type).is_none() {
                return Err((
                    "actor_type",
                    format!("{actor_type:?} is not USER, SERVICE or SYSTEM"),
                ));
            }
        }
        if let Some(result) = &self.result {
            if parse_result(result).is_none() {
                return Err((
                    "result",
                    format!("{result:?} is not SUCCESS, FAILURE or DENIED"),
                ));
            }
        }
        if let Some(action) = &self.action {
            if action.is_empty() || action == ".*" {
                return Err(("action", format!("{action:?} is not an action or prefix")));
            }
        }
        let start = time_bound("occurred_at_start", &self.occurred_at_start)?;
        let end = time_bound("occurred_at_end", &self.occurred_at_end)?;
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                return Err((
                    "occurred_at_end",
                    "is not after occurred_at_start".to_string(),
                ));
            }
        }
        Ok(())
    }

    /// The first field the event does not match, or `None` when it matches. The filter
    /// must have passed [`ExportFilter::check`].
    pub fn mismatch(&self, event: &CanonicalEvent) -> Option<&'static str> {
        fn differs(wanted: &Option<String>, value: &str) -> bool {
            wanted.as_deref().is_some_and(|wanted| wanted != value)
        }
        if differs(&self.actor_id, &event.actor_id) {
            return Some("actor_id");
        }
        if differs(&self.actor_type, actor_type_name(event.actor_type)) {
            return Some("actor_type");
        }
        if let Some(action) = &self.action {
            let matches = match action.strip_suffix('*') {
                // `auth.*` keeps its dot: `auth.` prefixes `auth.login`, not `authz`.
                Some(prefix) if prefix.ends_with('.') => event.action.starts_with(prefix),
                _ => event.action == *action,
            };
            if !matches {
                return Some("action");
            }
        }
        if differs(&self.resource_type, &event.resource_type) {
            return Some("resource_type");
        }
        if differs(&self.resource_id, &event.resource_id) {
            return Some("resource_id");
        }
        if differs(&self.result, result_name(event.result)) {
            return Some("result");
        }
        if differs(&self.request_id, &event.request_id) {
            return Some("request_id");
        }
        let parsed = |text: &Option<String>| {
            text.as_deref()
                .map(|text| crate::checkpoint::parse_time(text).expect("checked filter"))
        };
        if parsed(&self.occurred_at_start).is_some_and(|start| event.occurred_at < start) {
            return Some("occurred_at_start");
        }
        if parsed(&self.occurred_at_end).is_some_and(|end| event.occurred_at >= end) {
            return Some("occurred_at_end");
        }
        None
    }
}

/// A bound in the one canonical time spelling, or none.
fn time_bound(
    field: &'static str,
    text: &Option<String>,
) -> Result<Option<i64>, (&'static str, String)> {
    match text {
        None => Ok(None),
        Some(text) => crate::checkpoint::parse_time(text)
            .map(Some)
            .ok_or_else(|| {
                (
                    field,
                    format!("{text:?} is not RFC 3339 UTC with nine fraction digits"),
                )
            }),
    }
}

/// Standard base64, as the bundle writes bytes.
fn encode_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::vector_event;

    #[test]
    fn filters_match_like_the_node() {
        let event = vector_event();
        let pass = |filter: ExportFilter| {
            filter.check().unwrap();
            filter.mismatch(&event)
        };
        assert_eq!(pass(ExportFilter::default()), None);
        let action = |text: &str| ExportFilter {
            action: Some(text.to_string()),
            ..ExportFilter::default()
        };
        assert_eq!(pass(action("auth.login")), None);
        assert_eq!(pass(action("auth.*")), None);
        assert_eq!(pass(action("auth.login.*")), Some("action"));
        assert_eq!(pass(action("aut.*")), Some("action"));
        assert_eq!(pass(action("auth")), Some("action"));
        let narrow = ExportFilter {
            actor_id: Some("usr_1".into()),
            actor_type: Some("USER".into()),
            resource_type: Some("session".into()),
            resource_id: Some("ses_1".into()),
            result: Some("SUCCESS".into()),
            request_id: Some("req_1".into()),
            occurred_at_start: Some("2025-01-01T00:00:02.719812000Z".into()),
            occurred_at_end: Some("2025-01-01T00:00:02.719812001Z".into()),
            ..ExportFilter::default()
        };
        assert_eq!(pass(narrow.clone()), None);
        let later = ExportFilter {
            occurred_at_start: Some("2025-01-01T00:00:02.719812001Z".into()),
            occurred_at_end: None,
            ..narrow.clone()
        };
        assert_eq!(pass(later), Some("occurred_at_start"));
        let denied = ExportFilter {
            result: Some("DENIED".into()),
            ..narrow
        };
        assert_eq!(pass(denied), Some("result"));
        let bad = ExportFilter {
            actor_type: Some("user".into()),
            ..ExportFilter::default()
        };
        assert_eq!(bad.check().unwrap_err().0, "actor_type");
        let backwards = ExportFilter {
            occurred_at_start: Some("2025-01-01T00:00:02.000000000Z".into()),
            occurred_at_end: Some("2025-01-01T00:00:01.000000000Z".into()),
            ..ExportFilter::default()
        };
        assert_eq!(backwards.check().unwrap_err().0, "occurred_at_end");
    }

    #[test]
    fn bundle_lines_have_one_json_shape() {
        let head = BundleHead {
            format: EXPORT_FORMAT_V1.to_string(),
            tenant_id: "ten_a".to_string(),
            stream: "ten_a/0".to_string(),
            file_format: FileFormat::Csv,
            events: 3,
            blocks: 1,
            selection: Selection::TimeRange {
                ingested_at_start: None,
                ingested_at_end: Some("2025-01-01T00:00:03.000000000Z".to_string()),
                first_seq: 1,
                last_seq: 3,
                before: None,
                after: Some("AQ==".to_string()),
            },
            checkpoint: "note".to_string(),
            tree_proof: vec![],
        };
        let text = serde_json::to_string(&head).unwrap();
        assert!(text.contains("\"kind\":\"time_range\""), "{text}");
        assert!(text.contains("\"file_format\":\"csv\""), "{text}");
        assert_eq!(serde_json::from_str::<BundleHead>(&text).unwrap(), head);
        let extra = text.replacen("\"first_seq\"", "\"surprise\":1,\"first_seq\"", 1);
        assert!(serde_json::from_str::<BundleHead>(&extra).is_err());

        let filtered = Selection::Filter {
            filter: ExportFilter {
                action: Some("auth.*".to_string()),
                ..ExportFilter::default()
            },
        };
        let text = serde_json::to_string(&filtered).unwrap();
        assert_eq!(text, r#"{"kind":"filter","filter":{"action":"auth.*"}}"#);
        assert_eq!(serde_json::from_str::<Selection>(&text).unwrap(), filtered);
        assert!(serde_json::from_str::<Selection>(
            r#"{"kind":"filter","filter":{"action":"auth.*","actor":"x"}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Selection>(r#"{"kind":"everything"}"#).is_err());

        let block = BlockLine {
            block_index: 4,
            header: "AQ==".to_string(),
            seqs: None,
            proof: vec![],
        };
        let text = serde_json::to_string(&block).unwrap();
        assert_eq!(text, r#"{"block_index":4,"header":"AQ==","proof":[]}"#);
        assert_eq!(serde_json::from_str::<BlockLine>(&text).unwrap(), block);
    }
}
