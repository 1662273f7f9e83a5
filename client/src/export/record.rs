//! Export records: one event per JSON line or CSV row, holding every field of its
//! canonical encoding (docs/CANONICAL_ENCODING.md) and its leaf hash, so the verifier
//! rebuilds the canonical bytes from the record alone. Pure: no I/O beyond a `BufRead`.
//!
//! Each record has exactly one spelling, which the verifier re-renders and compares
//! byte for byte: times are RFC 3339 UTC with nine fraction digits (exact to the
//! nanosecond), enums are upper case, every field is present (empty strings too), the
//! metadata is the stored JSON text verbatim in a string, and the fields come in a fixed
//! order. A record that was edited, reformatted or re-encoded by a tool is reported.

use std::io::{self, BufRead, Read};

use serde::{Deserialize, Serialize};

use super::FileFormat;
use crate::checkpoint::{format_time, parse_time};
use crate::event::{ActorType, CanonicalEvent, CanonicalEventRef, EventResult};

/// CSV columns, in order; the header row is these names joined by commas. JSON lines
/// hold the same fields, with `actor` and `resource` as objects.
pub const CSV_COLUMNS: [&str; 21] = [
    "event_id",
    "tenant_id",
    "actor_type",
    "actor_id",
    "actor_email",
    "actor_name",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "ip_address",
    "user_agent",
    "request_id",
    "session_id",
    "occurred_at",
    "metadata_json",
    "subject_id",
    "stream",
    "seq",
    "ingested_at",
    "leaf_hash",
];

/// The CSV header row, with its newline.
pub fn csv_header_line() -> String {
    let mut line = CSV_COLUMNS.join(",");
    line.push('\n');
    line
}

pub fn actor_type_name(actor_type: ActorType) -> &'static str {
    match actor_type {
        ActorType::User => "USER",
        ActorType::Service => "SERVICE",
        ActorType::System => "SYSTEM",
    }
}

pub fn parse_actor_type(name: &str) -> Option<ActorType> {
    match name {
        "USER" => Some(ActorType::User),
        "SERVICE" => Some(ActorType::Service),
        "SYSTEM" => Some(ActorType::System),
        _ => None,
    }
}

pub fn result_name(result: EventResult) -> &'static str {
    match result {
        EventResult::Success => "SUCCESS",
        EventResult::Failure => "FAILURE",
        EventResult::Denied => "DENIED",
    }
}

pub fn parse_result(name: &str) -> Option<EventResult> {
    match name {
        "SUCCESS" => Some(EventResult::Success),
        "FAILURE" => Some(EventResult::Failure),
        "DENIED" => Some(EventResult::Denied),
        _ => None,
    }
}

/// A borrowed view of an owned event, to render it like one decoded from bytes.
pub fn borrowed(event: &CanonicalEvent) -> CanonicalEventRef<'_> {
    CanonicalEventRef {
        stream: &event.stream,
        seq: event.seq,
        ingested_at: event.ingested_at,
        tenant_id: &event.tenant_id,
        event_id: &event.event_id,
        occurred_at: event.occurred_at,
        actor_type: event.actor_type,
        actor_id: &event.actor_id,
        actor_email: &event.actor_email,
        actor_name: &event.actor_name,
        action: &event.action,
        resource_type: &event.resource_type,
        resource_id: &event.resource_id,
        result: event.result,
        request_id: &event.request_id,
        session_id: &event.session_id,
        ip_address: &event.ip_address,
        user_agent: &event.user_agent,
        metadata: &event.metadata,
        subject_id: &event.subject_id,
    }
}

#[derive(Serialize)]
struct ActorOut<'a> {
    #[serde(rename = "type")]
    actor_type: &'static str,
    id: &'a str,
    email: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
struct ResourceOut<'a> {
    #[serde(rename = "type")]
    resource_type: &'a str,
    id: &'a str,
}

/// A JSON record, fields in the workload's order, then what the ledger added.
#[derive(Serialize)]
struct JsonRecordOut<'a> {
    event_id: &'a str,
    tenant_id: &'a str,
    actor: ActorOut<'a>,
    action: &'a str,
    resource: ResourceOut<'a>,
    result: &'static str,
    ip_address: &'a str,
    user_agent: &'a str,
    request_id: &'a str,
    session_id: &'a str,
    occurred_at: String,
    metadata_json: &'a str,
    subject_id: &'a str,
    stream: &'a str,
    seq: u64,
    ingested_at: String,
    leaf_hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActorIn {
    #[serde(rename = "type")]
    actor_type: String,
    id: String,
    email: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceIn {
    #[serde(rename = "type")]
    resource_type: String,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecordIn {
    event_id: String,
    tenant_id: String,
    actor: ActorIn,
    action: String,
    resource: ResourceIn,
    result: String,
    ip_address: String,
    user_agent: String,
    request_id: String,
    session_id: String,
    occurred_at: String,
    metadata_json: String,
    subject_id: String,
    stream: String,
    seq: u64,
    ingested_at: String,
    leaf_hash: String,
}

/// The record of an event, with its newline: the one spelling the verifier accepts.
pub fn render_record(
    event: &CanonicalEventRef<'_>,
    leaf_hash: &[u8; 32],
    format: FileFormat,
) -> String {
    match format {
        FileFormat::Jsonl => {
            let record = JsonRecordOut {
                event_id: event.event_id,
                tenant_id: event.tenant_id,
                actor: ActorOut {
                    actor_type: actor_type_name(event.actor_type),
                    id: event.actor_id,
                    email: event.actor_email,
                    name: event.actor_name,
                },
                action: event.action,
                resource: ResourceOut {
                    resource_type: event.resource_type,
                    id: event.resource_id,
                },
                result: result_name(event.result),
                ip_address: event.ip_address,
                user_agent: event.user_agent,
                request_id: event.request_id,
                session_id: event.session_id,
                occurred_at: format_time(event.occurred_at),
                metadata_json: event.metadata,
                subject_id: event.subject_id,
                stream: event.stream,
                seq: event.seq,
                ingested_at: format_time(event.ingested_at),
                leaf_hash: hex::encode(leaf_hash),
            };
            let mut line = serde_json::to_string(&record).expect("a record serializes");
            line.push('\n');
            line
        }
        FileFormat::Csv => render_csv(event, leaf_hash, true),
    }
}

/// A CSV record; `formula_escape` false gives the spelling of exports written before the
/// formula escape (their cells as they are), which the verifier still accepts.
fn render_csv(event: &CanonicalEventRef<'_>, leaf_hash: &[u8; 32], formula_escape: bool) -> String {
    let seq = event.seq.to_string();
    let occurred_at = format_time(event.occurred_at);
    let ingested_at = format_time(event.ingested_at);
    let leaf = hex::encode(leaf_hash);
    let fields: [&str; 21] = [
        event.event_id,
        event.tenant_id,
        actor_type_name(event.actor_type),
        event.actor_id,
        event.actor_email,
        event.actor_name,
        event.action,
        event.resource_type,
        event.resource_id,
        result_name(event.result),
        event.ip_address,
        event.user_agent,
        event.request_id,
        event.session_id,
        &occurred_at,
        event.metadata,
        event.subject_id,
        event.stream,
        &seq,
        &ingested_at,
        &leaf,
    ];
    let mut line = String::with_capacity(fields.iter().map(|field| field.len() + 1).sum());
    for (position, field) in fields.iter().enumerate() {
        if position > 0 {
            line.push(',');
        }
        push_csv_field(&mut line, field, formula_escape);
    }
    line.push('\n');
    line
}

/// The CSV spelling of exports written before the formula escape ([`CSV_ESCAPED_FIRST`]):
/// accepted by the verifier beside the current one, so that such an export, kept by an
/// auditor, still verifies.
pub fn render_csv_unescaped(event: &CanonicalEventRef<'_>, leaf_hash: &[u8; 32]) -> String {
    render_csv(event, leaf_hash, false)
}

/// First characters that make a spreadsheet program read a cell as a formula (OWASP,
/// "CSV injection": `=`, `+`, `-`, `@`, tab, carriage return), and `'`, the escape
/// itself. A field starting with one is written with a `'` in front, which spreadsheets
/// show as text; escaping `'` too keeps the mapping one to one, so reading strips exactly
/// one `'` from a field that starts with it.
pub const CSV_ESCAPED_FIRST: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// Formula escape first (a field starting with one of [`CSV_ESCAPED_FIRST`] gets a `'`
/// in front), then RFC 4180: a field with a comma, a quote or a line break is quoted,
/// its quotes doubled; any other field is written as it is.
fn push_csv_field(line: &mut String, field: &str, formula_escape: bool) {
    let escaped = formula_escape && field.starts_with(CSV_ESCAPED_FIRST);
    let quoted = field.contains([',', '"', '\n', '\r']);
    if quoted {
        line.push('"');
    }
    if escaped {
        line.push('\'');
    }
    if quoted {
        line.push_str(&field.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(field);
    }
}

/// Undoes [`push_csv_field`]'s formula escape on a field read back (quotes already
/// removed). A `'` in front of anything the export does not escape is not its spelling.
fn unescape_csv_field(field: String) -> Result<String, String> {
    let Some(rest) = field.strip_prefix('\'') else {
        return Ok(field);
    };
    if !rest.starts_with(CSV_ESCAPED_FIRST) {
        return Err(format!(
            "{:?} starts with ', which the export writes only before = + - @ ' tab or \
             carriage return",
            field
        ));
    }
    Ok(rest.to_string())
}

/// Splits one CSV record (without its final newline) into fields, RFC 4180 rules.
fn split_csv(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::with_capacity(CSV_COLUMNS.len());
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("field {} has no closing quote", fields.len() + 1)),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(other) => field.push(other),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(other) => {
                    return Err(format!(
                        "field {} has {other:?} after its closing quote",
                        fields.len() + 1
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => {
                        return Err(format!(
                            "field {} has a quote but does not start with one",
                            fields.len() + 1
                        ))
                    }
                    Some(other) => field.push(other),
                }
            }
            fields.push(field);
        }
    }
}

/// A record's fields as read, before any check of the proofs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedRecord {
    pub event: CanonicalEvent,
    /// The record's `leaf_hash` field.
    pub leaf_hash: [u8; 32],
}

/// Why a record could not be read; names the field when one is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub field: Option<&'static str>,
    pub reason: String,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field {
            Some(field) => write!(formatter, "field {field}: {}", self.reason),
            None => formatter.write_str(&self.reason),
        }
    }
}

fn field_error(field: &'static str, reason: impl Into<String>) -> RecordError {
    RecordError {
        field: Some(field),
        reason: reason.into(),
    }
}

fn time_field(field: &'static str, text: &str) -> Result<i64, RecordError> {
    parse_time(text).ok_or_else(|| {
        field_error(
            field,
            format!("{text:?} is not RFC 3339 UTC with nine fraction digits (YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ)"),
        )
    })
}

fn hash_field(text: &str) -> Result<[u8; 32], RecordError> {
    let mut hash = [0u8; 32];
    if text.len() != 64 || hex::decode_to_slice(text, &mut hash).is_err() {
        return Err(field_error(
            "leaf_hash",
            format!("{text:?} is not 64 hex digits"),
        ));
    }
    Ok(hash)
}

/// The owned fields of a record, whichever its format.
struct Fields {
    event_id: String,
    tenant_id: String,
    actor_type: String,
    actor_id: String,
    actor_email: String,
    actor_name: String,
    action: String,
    resource_type: String,
    resource_id: String,
    result: String,
    ip_address: String,
    user_agent: String,
    request_id: String,
    session_id: String,
    occurred_at: String,
    metadata_json: String,
    subject_id: String,
    stream: String,
    seq: u64,
    ingested_at: String,
    leaf_hash: String,
}

impl Fields {
    fn into_record(self) -> Result<ParsedRecord, RecordError> {
        let actor_type = parse_actor_type(&self.actor_type).ok_or_else(|| {
            field_error(
                "actor.type",
                format!("{:?} is not USER, SERVICE or SYSTEM", self.actor_type),
            )
        })?;
        let result = parse_result(&self.result).ok_or_else(|| {
            field_error(
                "result",
                format!("{:?} is not SUCCESS, FAILURE or DENIED", self.result),
            )
        })?;
        let occurred_at = time_field("occurred_at", &self.occurred_at)?;
        let ingested_at = time_field("ingested_at", &self.ingested_at)?;
        let leaf_hash = hash_field(&self.leaf_hash)?;
        Ok(ParsedRecord {
            event: CanonicalEvent {
                stream: self.stream,
                seq: self.seq,
                ingested_at,
                tenant_id: self.tenant_id,
                event_id: self.event_id,
                occurred_at,
                actor_type,
                actor_id: self.actor_id,
                actor_email: self.actor_email,
                actor_name: self.actor_name,
                action: self.action,
                resource_type: self.resource_type,
                resource_id: self.resource_id,
                result,
                request_id: self.request_id,
                session_id: self.session_id,
                ip_address: self.ip_address,
                user_agent: self.user_agent,
                metadata: self.metadata_json,
                subject_id: self.subject_id,
            },
            leaf_hash,
        })
    }
}

/// Reads a record's fields (`text` without its newline). Only the shape is checked
/// here; the caller re-encodes, hashes and re-renders.
pub fn parse_record(text: &str, format: FileFormat) -> Result<ParsedRecord, RecordError> {
    let fields = match format {
        FileFormat::Jsonl => {
            let record: JsonRecordIn = serde_json::from_str(text).map_err(|error| RecordError {
                field: None,
                reason: format!("not a trail-export-v1 JSON record: {error}"),
            })?;
            Fields {
                event_id: record.event_id,
                tenant_id: record.tenant_id,
                actor_type: record.actor.actor_type,
                actor_id: record.actor.id,
                actor_email: record.actor.email,
                actor_name: record.actor.name,
                action: record.action,
                resource_type: record.resource.resource_type,
                resource_id: record.resource.id,
                result: record.result,
                ip_address: record.ip_address,
                user_agent: record.user_agent,
                request_id: record.request_id,
                session_id: record.session_id,
                occurred_at: record.occurred_at,
                metadata_json: record.metadata_json,
                subject_id: record.subject_id,
                stream: record.stream,
                seq: record.seq,
                ingested_at: record.ingested_at,
                leaf_hash: record.leaf_hash,
            }
        }
        FileFormat::Csv => {
            let columns = split_csv(text).map_err(|reason| RecordError {
                field: None,
                reason: format!("not a CSV record: {reason}"),
            })?;
            if columns.len() != CSV_COLUMNS.len() {
                return Err(RecordError {
                    field: None,
                    reason: format!(
                        "{} columns, a record has {} ({})",
                        columns.len(),
                        CSV_COLUMNS.len(),
                        CSV_COLUMNS.join(",")
                    ),
                });
            }
            let mut unescaped = Vec::with_capacity(columns.len());
            for (column, name) in columns.into_iter().zip(CSV_COLUMNS) {
                unescaped
                    .push(unescape_csv_field(column).map_err(|reason| field_error(name, reason))?);
            }
            let columns = unescaped;
            let seq_text = &columns[18];
            let seq = crate::checkpoint::parse_canonical_u64(seq_text).ok_or_else(|| {
                field_error("seq", format!("{seq_text:?} is not a decimal number"))
            })?;
            let mut columns = columns.into_iter();
            let mut next = || columns.next().expect("21 columns");
            Fields {
                event_id: next(),
                tenant_id: next(),
                actor_type: next(),
                actor_id: next(),
                actor_email: next(),
                actor_name: next(),
                action: next(),
                resource_type: next(),
                resource_id: next(),
                result: next(),
                ip_address: next(),
                user_agent: next(),
                request_id: next(),
                session_id: next(),
                occurred_at: next(),
                metadata_json: next(),
                subject_id: next(),
                stream: next(),
                seq: {
                    next();
                    seq
                },
                ingested_at: next(),
                leaf_hash: next(),
            }
        }
    };
    fields.into_record()
}

/// One raw record of an export file: where it starts and its text without the final
/// newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// 1-based line number of the record's first line.
    pub line: u64,
    pub text: String,
}

/// Why the next raw record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadRecordError {
    #[error("cannot read: {reason}")]
    Io { reason: String },
    #[error("longer than {bytes_max} bytes, more than any record")]
    TooLong { bytes_max: usize },
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("does not end with a newline (the file is truncated?)")]
    NoNewline,
    #[error("a quoted CSV field is not closed before the end of the file")]
    OpenQuote,
}

/// Reads at most `bytes_max` bytes up to and including the next `\n` into `buffer`
/// (cleared first). `Ok(false)` at the end of the input.
pub fn read_line_capped<R: BufRead>(
    reader: &mut R,
    buffer: &mut Vec<u8>,
    bytes_max: usize,
) -> Result<bool, ReadRecordError> {
    buffer.clear();
    let read = reader
        .take(bytes_max as u64 + 1)
        .read_until(b'\n', buffer)
        .map_err(|error: io::Error| ReadRecordError::Io {
            reason: error.to_string(),
        })?;
    if read == 0 {
        return Ok(false);
    }
    if buffer.len() > bytes_max {
        return Err(ReadRecordError::TooLong { bytes_max });
    }
    Ok(true)
}

/// Reads an export file record by record: a JSON line, or a CSV record, which spans
/// several lines when a quoted field holds a line break. Memory: one record, at most
/// `bytes_max` bytes.
pub struct RecordReader<R> {
    reader: R,
    format: FileFormat,
    bytes_max: usize,
    /// Lines read so far.
    lines: u64,
    buffer: Vec<u8>,
}

impl<R: BufRead> RecordReader<R> {
    pub fn new(reader: R, format: FileFormat, bytes_max: usize) -> RecordReader<R> {
        RecordReader {
            reader,
            format,
            bytes_max,
            lines: 0,
            buffer: Vec::new(),
        }
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The next record; `Ok(None)` at the end. An error names the line it starts at.
    pub fn next_record(&mut self) -> Result<Option<RawRecord>, (u64, ReadRecordError)> {
        let first_line = self.lines + 1;
        let mut text: Vec<u8> = Vec::new();
        loop {
            let left = self.bytes_max.saturating_sub(text.len());
            let more =
                read_line_capped(&mut self.reader, &mut self.buffer, left).map_err(|error| {
                    match error {
                        ReadRecordError::TooLong { .. } => (
                            first_line,
                            ReadRecordError::TooLong {
                                bytes_max: self.bytes_max,
                            },
                        ),
                        other => (first_line, other),
                    }
                })?;
            if !more {
                if text.is_empty() {
                    return Ok(None);
                }
                return Err((first_line, ReadRecordError::OpenQuote));
            }
            self.lines += 1;
            if self.buffer.last() != Some(&b'\n') {
                return Err((first_line, ReadRecordError::NoNewline));
            }
            text.extend_from_slice(&self.buffer);
            // A CSV record ends at a newline outside quotes: after an even number of
            // quote characters, as a doubled quote inside a field counts two.
            let complete = match self.format {
                FileFormat::Jsonl => true,
                FileFormat::Csv => text.iter().filter(|&&byte| byte == b'"').count() % 2 == 0,
            };
            if complete {
                text.pop();
                let text =
                    String::from_utf8(text).map_err(|_| (first_line, ReadRecordError::NotUtf8))?;
                return Ok(Some(RawRecord {
                    line: first_line,
                    text,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::event_leaf_hash;
    use crate::event::tests::{vector_event, VECTOR_HEX};

    fn vector_bytes() -> Vec<u8> {
        hex::decode(VECTOR_HEX).unwrap()
    }

    fn round_trip(event: &CanonicalEvent, format: FileFormat) {
        let bytes = event.encode();
        let leaf = event_leaf_hash(&bytes);
        let decoded = CanonicalEventRef::decode(&bytes).unwrap();
        let line = render_record(&decoded, &leaf, format);
        assert!(line.ends_with('\n'));
        let mut reader = RecordReader::new(line.as_bytes(), format, 1 << 20);
        let raw = reader.next_record().unwrap().unwrap();
        assert_eq!(raw.line, 1);
        assert_eq!(reader.next_record().unwrap(), None);
        let parsed = parse_record(&raw.text, format).unwrap();
        assert_eq!(&parsed.event, event);
        assert_eq!(parsed.leaf_hash, leaf);
        assert_eq!(parsed.event.encode(), bytes);
        assert_eq!(render_record(&borrowed(&parsed.event), &leaf, format), line);
    }

    #[test]
    fn the_test_vector_renders_and_reads_back_in_both_formats() {
        let event = CanonicalEvent::decode(&vector_bytes()).unwrap();
        assert_eq!(event, vector_event());
        let leaf = event_leaf_hash(&vector_bytes());
        let json = render_record(&borrowed(&event), &leaf, FileFormat::Jsonl);
        assert_eq!(
            json,
            "{\"event_id\":\"evt_1\",\"tenant_id\":\"ten_0001\",\"actor\":{\"type\":\"USER\",\
             \"id\":\"usr_1\",\"email\":\"ada@example.com\",\"name\":\"Ada\"},\"action\":\
             \"auth.login\",\"resource\":{\"type\":\"session\",\"id\":\"ses_1\"},\"result\":\
             \"SUCCESS\",\"ip_address\":\"203.0.113.7\",\"user_agent\":\"curl/8\",\"request_id\"\
             :\"req_1\",\"session_id\":\"\",\"occurred_at\":\"2025-01-01T00:00:02.719812000Z\",\
             \"metadata_json\":\"{\\\"mfa\\\":true}\",\"subject_id\":\"usr_1\",\"stream\":\
             \"ten_0001/0\",\"seq\":1,\"ingested_at\":\"2025-01-01T00:00:03.000000000Z\",\
             \"leaf_hash\":\"aac0a5411a911bbc021a4db79273f24b41c6ed12b8386ed922943d2d7931d930\"}\n"
        );
        let csv = render_record(&borrowed(&event), &leaf, FileFormat::Csv);
        assert_eq!(
            csv,
            "evt_1,ten_0001,USER,usr_1,ada@example.com,Ada,auth.login,session,ses_1,SUCCESS,\
             203.0.113.7,curl/8,req_1,,2025-01-01T00:00:02.719812000Z,\"{\"\"mfa\"\":true}\",\
             usr_1,ten_0001/0,1,2025-01-01T00:00:03.000000000Z,\
             aac0a5411a911bbc021a4db79273f24b41c6ed12b8386ed922943d2d7931d930\n"
        );
        round_trip(&event, FileFormat::Jsonl);
        round_trip(&event, FileFormat::Csv);
    }

    #[test]
    fn awkward_text_survives_both_formats() {
        let awkward = CanonicalEvent {
            actor_name: "O'Brien, \"Bob\"".to_string(),
            user_agent: "line one\nline two\r\nthree,".to_string(),
            metadata: "{ \"note\": \"spaces kept\" ,\"x\":[1,2]}".to_string(),
            resource_id: "ünïcödé \u{0001} tab\t".to_string(),
            session_id: ",".to_string(),
            request_id: "\"".to_string(),
            occurred_at: -1,
            ..vector_event()
        };
        round_trip(&awkward, FileFormat::Jsonl);
        round_trip(&awkward, FileFormat::Csv);
        // Several multi-line CSV records in a row keep their line numbers.
        let bytes = awkward.encode();
        let leaf = event_leaf_hash(&bytes);
        let line = render_record(&borrowed(&awkward), &leaf, FileFormat::Csv);
        let text = format!("{}{line}{line}", csv_header_line());
        let mut reader = RecordReader::new(text.as_bytes(), FileFormat::Csv, 1 << 20);
        let header = reader.next_record().unwrap().unwrap();
        assert_eq!(header.text, CSV_COLUMNS.join(","));
        // The user agent holds two line breaks: each record spans three lines.
        assert_eq!(reader.next_record().unwrap().unwrap().line, 2);
        assert_eq!(reader.next_record().unwrap().unwrap().line, 5);
        assert_eq!(reader.next_record().unwrap(), None);
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_escaped_with_a_quote_and_read_back() {
        let formulas = CanonicalEvent {
            actor_id: "=HYPERLINK(\"http://x\")".to_string(),
            actor_email: "@SUM(1+1)".to_string(),
            actor_name: "+1".to_string(),
            resource_id: "-2+3".to_string(),
            request_id: "\tx".to_string(),
            session_id: "\rx".to_string(),
            user_agent: "'=1".to_string(),
            subject_id: "''".to_string(),
            ..vector_event()
        };
        let bytes = formulas.encode();
        let leaf = event_leaf_hash(&bytes);
        let row = render_record(&borrowed(&formulas), &leaf, FileFormat::Csv);
        assert!(
            row.starts_with(
                "evt_1,ten_0001,USER,\"'=HYPERLINK(\"\"http://x\"\")\",'@SUM(1+1),'+1,\
                 auth.login,session,'-2+3,SUCCESS,203.0.113.7,''=1,'\tx,\"'\rx\","
            ),
            "{row}"
        );
        assert!(row.contains(",''',ten_0001/0,"), "{row}");
        round_trip(&formulas, FileFormat::Csv);
        round_trip(&formulas, FileFormat::Jsonl);
        // A ' before anything the export does not escape is not its spelling.
        let edited = row.trim_end().replace(",'+1,", ",'1,");
        let error = parse_record(&edited, FileFormat::Csv).unwrap_err();
        assert_eq!(error.field, Some("actor_name"), "{error}");
    }

    proptest::proptest! {
        /// Any text in any field renders to a record that reads back to the same event
        /// and re-renders to the same bytes, in both formats.
        #[test]
        fn every_event_round_trips_through_both_formats(
            texts in proptest::collection::vec("[=+@'\\-\t\r\n,\" a1\u{e9}]{0,5}", 12),
        ) {
            let event = CanonicalEvent {
                event_id: texts[0].clone(),
                tenant_id: texts[1].clone(),
                actor_id: texts[2].clone(),
                actor_email: texts[3].clone(),
                actor_name: texts[4].clone(),
                action: texts[5].clone(),
                resource_type: texts[6].clone(),
                resource_id: texts[7].clone(),
                request_id: texts[8].clone(),
                session_id: texts[9].clone(),
                user_agent: texts[10].clone(),
                subject_id: texts[11].clone(),
                ..vector_event()
            };
            round_trip(&event, FileFormat::Csv);
            round_trip(&event, FileFormat::Jsonl);
        }
    }

    #[test]
    fn malformed_records_are_named() {
        let event = vector_event();
        let leaf = event_leaf_hash(&event.encode());
        let json = render_record(&borrowed(&event), &leaf, FileFormat::Jsonl);
        let text = json.trim_end();
        let error =
            parse_record(&text.replace("\"USER\"", "\"user\""), FileFormat::Jsonl).unwrap_err();
        assert_eq!(error.field, Some("actor.type"));
        let error = parse_record(
            &text.replace("02.719812000Z", "02.719812Z"),
            FileFormat::Jsonl,
        )
        .unwrap_err();
        assert_eq!(error.field, Some("occurred_at"));
        let error = parse_record(&text.replace("\"aac0", "\"zzz0"), FileFormat::Jsonl).unwrap_err();
        assert_eq!(error.field, Some("leaf_hash"));
        let error = parse_record(
            &text.replace("\"seq\":1", "\"seq\":1,\"extra\":2"),
            FileFormat::Jsonl,
        )
        .unwrap_err();
        assert!(error.reason.contains("unknown field"), "{error}");
        let error =
            parse_record(&text.replace(",\"session_id\":\"\"", ""), FileFormat::Jsonl).unwrap_err();
        assert!(error.reason.contains("missing field"), "{error}");

        let csv = render_record(&borrowed(&event), &leaf, FileFormat::Csv);
        let row = csv.trim_end();
        assert!(parse_record(&format!("{row},x"), FileFormat::Csv)
            .unwrap_err()
            .reason
            .contains("22 columns"));
        assert!(
            parse_record(&row.replace(",ses_1,", ",se\"s_1,"), FileFormat::Csv)
                .unwrap_err()
                .reason
                .contains("does not start with one")
        );
        assert_eq!(
            parse_record(&row.replace(",1,2025", ",01,2025"), FileFormat::Csv)
                .unwrap_err()
                .field,
            Some("seq")
        );

        let mut unterminated = RecordReader::new("a,\"b\n".as_bytes(), FileFormat::Csv, 100);
        assert_eq!(
            unterminated.next_record(),
            Err((1, ReadRecordError::OpenQuote))
        );
        let mut no_newline = RecordReader::new("{}".as_bytes(), FileFormat::Jsonl, 100);
        assert_eq!(
            no_newline.next_record(),
            Err((1, ReadRecordError::NoNewline))
        );
        let mut long = RecordReader::new("0123456789\n".as_bytes(), FileFormat::Jsonl, 5);
        assert_eq!(
            long.next_record(),
            Err((1, ReadRecordError::TooLong { bytes_max: 5 }))
        );
        let mut utf8 = RecordReader::new(&b"\xff\n"[..], FileFormat::Jsonl, 5);
        assert_eq!(utf8.next_record(), Err((1, ReadRecordError::NotUtf8)));
    }
}
