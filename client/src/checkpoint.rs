//! Trail checkpoints: C2SP tlog-checkpoints (<https://c2sp.org/tlog-checkpoint>) of one
//! stream's tree of block hashes, with two Trail extension lines (docs/PROOFS.md). Pure:
//! no I/O.
//!
//! ```text
//! trail.local/ten_0001/0                  origin: {prefix}/{tenant_id}/{stream index}
//! 42                                      tree size: blocks covered
//! <base64 root, 32 bytes>                 stream tree root
//! seq 43008                               last event seq covered
//! time 2026-11-23T10:00:00.123456789Z     sealed_at of the last covered block
//! ```
//!
//! Numbers must be canonical (decimal, no sign, no leading zero unless the number is 0)
//! and the time exactly as RFC 3339 with nine fraction digits in UTC (`Z`): a note has one
//! spelling, so two spellings of one checkpoint cannot circulate with two signatures.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use crate::note::{verify_note, NoteError, VerifierKey};

/// Why a checkpoint text was refused. Messages name the line at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {0}")]
    Note(NoteError),
    #[error("checkpoint has no {line} line")]
    MissingLine { line: &'static str },
    #[error("checkpoint origin {origin:?} is not \"<prefix>/<tenant_id>/<stream index>\"")]
    Origin { origin: String },
    #[error("checkpoint {line} line {text:?} is not {expected}")]
    BadLine {
        line: &'static str,
        text: String,
        expected: &'static str,
    },
    #[error("checkpoint has an unexpected line after the time line: {text:?}")]
    ExtraLine { text: String },
    #[error(
        "checkpoint says tree size {tree_size} and last seq {last_seq}: every block holds at \
         least one event, so the seq is at least the size (and 0 only when the size is 0)"
    )]
    SeqBelowSize { tree_size: u64, last_seq: u64 },
}

/// The contents of a checkpoint note's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Line 1 as written, `{origin prefix}/{stream}`.
    pub origin: String,
    /// `{tenant_id}/{stream index}`, the last two parts of the origin.
    pub stream: String,
    pub tenant_id: String,
    pub stream_index: u32,
    /// Blocks covered.
    pub tree_size: u64,
    /// Stream tree root over the first `tree_size` block hashes.
    pub root_hash: [u8; 32],
    /// The `seq` line: the last event seq covered.
    pub last_seq: u64,
    /// The `time` line, ns since the Unix epoch: `sealed_at` of the last covered block.
    pub time_ns: i64,
}

impl Checkpoint {
    /// Parses a checkpoint note's text (the signed part, without the signatures): origin,
    /// tree size, root, `seq N`, `time T`, each ending in `\n`, nothing else.
    pub fn parse_text(text: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = text.split_terminator('\n');
        let mut next =
            |line: &'static str| lines.next().ok_or(CheckpointError::MissingLine { line });

        let origin = next("origin")?;
        let (stream, tenant_id, stream_index) = parse_origin(origin)?;
        let size_text = next("tree size")?;
        let tree_size = parse_canonical_u64(size_text).ok_or_else(|| CheckpointError::BadLine {
            line: "tree size",
            text: size_text.to_string(),
            expected: "a decimal number without sign or leading zeros",
        })?;
        let root_text = next("root hash")?;
        let root_hash = parse_root(root_text).ok_or_else(|| CheckpointError::BadLine {
            line: "root hash",
            text: root_text.to_string(),
            expected: "the standard base64 of 32 bytes",
        })?;
        let seq_text = next("seq")?;
        let last_seq = seq_text
            .strip_prefix("seq ")
            .and_then(parse_canonical_u64)
            .ok_or_else(|| CheckpointError::BadLine {
                line: "seq",
                text: seq_text.to_string(),
                expected: "\"seq N\" with N decimal without leading zeros",
            })?;
        let time_text = next("time")?;
        let time_ns = time_text
            .strip_prefix("time ")
            .and_then(parse_time)
            .ok_or_else(|| CheckpointError::BadLine {
                line: "time",
                text: time_text.to_string(),
                expected:
                    "\"time YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ\" (RFC 3339, UTC, 9 fraction digits)",
            })?;
        if let Some(extra) = lines.next() {
            return Err(CheckpointError::ExtraLine {
                text: extra.to_string(),
            });
        }
        if last_seq < tree_size || (last_seq == 0) != (tree_size == 0) {
            return Err(CheckpointError::SeqBelowSize {
                tree_size,
                last_seq,
            });
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            stream,
            tenant_id,
            stream_index,
            tree_size,
            root_hash,
            last_seq,
            time_ns,
        })
    }

    /// Verifies `note`'s signature under `key`, then parses its text.
    pub fn from_note(note: &str, key: &VerifierKey) -> Result<Checkpoint, CheckpointError> {
        let text = verify_note(note, key).map_err(CheckpointError::Note)?;
        Checkpoint::parse_text(&text)
    }

    /// The `time` line's value as it is written.
    pub fn time_text(&self) -> String {
        format_time(self.time_ns)
    }
}

/// `(stream, tenant_id, stream index)` of `{prefix}/{tenant_id}/{index}`. Tenant ids have
/// no `/` (the server allows letters, digits, `_` and `-`), so the last two parts are the
/// stream whatever the prefix holds.
fn parse_origin(origin: &str) -> Result<(String, String, u32), CheckpointError> {
    let refuse = || CheckpointError::Origin {
        origin: origin.to_string(),
    };
    let (rest, index_text) = origin.rsplit_once('/').ok_or_else(refuse)?;
    let (prefix, tenant_id) = rest.rsplit_once('/').ok_or_else(refuse)?;
    if prefix.is_empty() || tenant_id.is_empty() {
        return Err(refuse());
    }
    let stream_index = parse_canonical_u64(index_text)
        .and_then(|index| u32::try_from(index).ok())
        .ok_or_else(refuse)?;
    Ok((
        format!("{tenant_id}/{stream_index}"),
        tenant_id.to_string(),
        stream_index,
    ))
}

/// `{tenant_id}/{index}` split, with a canonical u32 index.
pub fn split_stream(stream: &str) -> Option<(&str, u32)> {
    let (tenant_id, index_text) = stream.rsplit_once('/')?;
    if tenant_id.is_empty() || tenant_id.contains('/') {
        return None;
    }
    let index = parse_canonical_u64(index_text).and_then(|index| u32::try_from(index).ok())?;
    Some((tenant_id, index))
}

/// A decimal u64 with one spelling: digits only, no leading zero unless it is `0`.
pub fn parse_canonical_u64(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    if text.len() > 1 && text.starts_with('0') {
        return None;
    }
    text.parse().ok()
}

fn parse_root(text: &str) -> Option<[u8; 32]> {
    let bytes = BASE64.decode(text).ok()?;
    bytes.try_into().ok()
}

/// RFC 3339 in UTC with nine fraction digits, e.g. `2025-01-01T00:00:03.123456789Z`.
pub fn format_time(time_ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(time_ns)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The inverse of [`format_time`], for that spelling only: anything else (another offset,
/// fewer digits, lower-case `t`) is refused by comparing with the canonical spelling.
pub fn parse_time(text: &str) -> Option<i64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    let time_ns = parsed.timestamp_nanos_opt()?;
    if format_time(time_ns) != text {
        return None;
    }
    Some(time_ns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::tests::{sign_note, test_signing_key, test_verifier_key};

    const ROOT_B64: &str = "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=";

    fn text() -> String {
        format!(
            "trail.local/ten_0001/0\n42\n{ROOT_B64}\nseq 43008\ntime 2025-01-01T00:00:03.123456789Z\n"
        )
    }

    #[test]
    fn a_checkpoint_parses() {
        let checkpoint = Checkpoint::parse_text(&text()).unwrap();
        assert_eq!(
            checkpoint,
            Checkpoint {
                origin: "trail.local/ten_0001/0".to_string(),
                stream: "ten_0001/0".to_string(),
                tenant_id: "ten_0001".to_string(),
                stream_index: 0,
                tree_size: 42,
                root_hash: [9; 32],
                last_seq: 43008,
                time_ns: 1_735_689_603_123_456_789,
            }
        );
        assert_eq!(checkpoint.time_text(), "2025-01-01T00:00:03.123456789Z");
        // A prefix with slashes of its own.
        let nested = text().replace("trail.local/", "example.com/trail/");
        assert_eq!(
            Checkpoint::parse_text(&nested).unwrap().stream,
            "ten_0001/0"
        );
    }

    #[test]
    fn a_signed_checkpoint_verifies_and_a_tampered_one_fails() {
        let signing = test_signing_key(4);
        let key = test_verifier_key("trail.local", &signing);
        let note = sign_note(&text(), "trail.local", &signing);
        assert_eq!(Checkpoint::from_note(&note, &key).unwrap().tree_size, 42);
        let tampered = note.replace("\n42\n", "\n43\n");
        let error = Checkpoint::from_note(&tampered, &key).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "checkpoint signature does not verify under key {}",
                key.short()
            )
        );
    }

    #[test]
    fn non_canonical_lines_are_refused() {
        let good = text();
        let cases = [
            ("leading zero size", good.replace("\n42\n", "\n042\n")),
            ("signed size", good.replace("\n42\n", "\n+42\n")),
            ("empty size", good.replace("\n42\n", "\n\n")),
            (
                "size overflow",
                good.replace("\n42\n", "\n18446744073709551616\n"),
            ),
            ("short root", good.replace(ROOT_B64, "CQkJ")),
            (
                "unpadded root",
                good.replace(ROOT_B64, ROOT_B64.trim_end_matches('=')),
            ),
            ("leading zero seq", good.replace("seq 43008", "seq 043008")),
            ("seq spacing", good.replace("seq 43008", "seq  43008")),
            (
                "time offset",
                good.replace("03.123456789Z", "03.123456789+00:00"),
            ),
            ("time digits", good.replace("03.123456789Z", "03.123Z")),
            ("time case", good.replace("01T00", "01t00")),
            ("extra line", format!("{good}extra\n")),
            (
                "no time",
                good.replace("time 2025-01-01T00:00:03.123456789Z\n", ""),
            ),
            (
                "origin without stream",
                good.replace("trail.local/ten_0001/0", "trail.local"),
            ),
            (
                "origin bad index",
                good.replace("ten_0001/0", "ten_0001/00"),
            ),
            ("seq below size", good.replace("seq 43008", "seq 41")),
        ];
        for (what, text) in cases {
            assert!(Checkpoint::parse_text(&text).is_err(), "{what}: {text:?}");
        }
    }

    #[test]
    fn numbers_and_times_have_one_spelling() {
        assert_eq!(parse_canonical_u64("0"), Some(0));
        assert_eq!(parse_canonical_u64("00"), None);
        assert_eq!(parse_canonical_u64("-1"), None);
        assert_eq!(parse_canonical_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_time("1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(
            parse_time(&format_time(-1)),
            Some(-1),
            "{}",
            format_time(-1)
        );
        assert_eq!(split_stream("ten_0001/3"), Some(("ten_0001", 3)));
        assert_eq!(split_stream("ten_0001/03"), None);
        assert_eq!(split_stream("a/b/0"), None);
    }
}
