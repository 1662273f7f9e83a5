//! Conversion between the workload's JSON lines and the wire messages.
//!
//! The input shape is the one `gen_events.py` writes (see the workload README):
//!
//! ```text
//! {"event_id":"…","tenant_id":"ten_0001","actor":{"type":"USER","id":"usr_…","email":"…"},
//!  "action":"auth.login","resource":{"type":"session","id":"…"},"result":"SUCCESS",
//!  "ip_address":"…","user_agent":"…","request_id":"…","session_id":"…",
//!  "occurred_at":"2025-01-01T00:00:02.719812Z","metadata":{…},"subject_id":"…"}
//! ```
//!
//! Parsing checks only the shape: every field is optional, `null` counts as absent,
//! and rules such as lengths, required fields and the clock skew bound are the server's
//! to enforce, so that there is one definition of them. Every error names the field and
//! what would be accepted.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use trail_proto::v1::{Actor, ActorType, Event, Resource, Result as EventResult, StoredEvent};
use trail_proto::Timestamp;

const EVENT_FIELDS: &str = "event_id, tenant_id, actor, action, resource, result, ip_address, \
                            user_agent, request_id, session_id, occurred_at, metadata, subject_id";
const ACTOR_FIELDS: &str = "type, id, email, name";
const RESOURCE_FIELDS: &str = "type, id";
const ACTOR_TYPES: &str = "USER, SERVICE, SYSTEM";
const RESULTS: &str = "SUCCESS, FAILURE, DENIED";

/// Why a JSON line is not an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("invalid JSON at column {column}: {message}")]
    InvalidJson { column: usize, message: String },
    #[error("expected a JSON object, got {got}")]
    NotAnObject { got: &'static str },
    #[error("unknown field \"{field}\" (accepted: {accepted})")]
    UnknownField {
        field: String,
        accepted: &'static str,
    },
    #[error("field \"{field}\": expected {expected}, got {got}")]
    WrongType {
        field: String,
        expected: &'static str,
        got: &'static str,
    },
    #[error("field \"{field}\": expected one of {accepted}, got \"{got}\"")]
    NotOneOf {
        field: String,
        accepted: &'static str,
        got: String,
    },
    #[error(
        "field \"{field}\": not an RFC 3339 time (e.g. 2025-01-01T00:00:02.719812Z), got \"{got}\""
    )]
    NotATime { field: String, got: String },
}

/// Parses one workload JSON line into an [`Event`].
pub fn parse_event(line: &str) -> Result<Event, ParseError> {
    let value: Value = serde_json::from_str(line).map_err(|error| {
        let location = format!(" at line {} column {}", error.line(), error.column());
        let full = error.to_string();
        let message = full.strip_suffix(&location).unwrap_or(&full).to_string();
        ParseError::InvalidJson {
            column: error.column(),
            message,
        }
    })?;
    let Value::Object(object) = value else {
        return Err(ParseError::NotAnObject {
            got: kind_name(&value),
        });
    };
    let mut event = Event::default();
    for (key, field_value) in &object {
        if field_value.is_null() {
            continue;
        }
        match key.as_str() {
            "event_id" => event.event_id = string_field(key, field_value)?,
            "tenant_id" => event.tenant_id = string_field(key, field_value)?,
            "actor" => event.actor = Some(parse_actor(field_value)?),
            "action" => event.action = string_field(key, field_value)?,
            "resource" => event.resource = Some(parse_resource(field_value)?),
            "result" => event.result = parse_result(field_value)? as i32,
            "ip_address" => event.ip_address = string_field(key, field_value)?,
            "user_agent" => event.user_agent = string_field(key, field_value)?,
            "request_id" => event.request_id = string_field(key, field_value)?,
            "session_id" => event.session_id = string_field(key, field_value)?,
            "occurred_at" => event.occurred_at = Some(parse_time(key, field_value)?),
            "metadata" => {
                if !field_value.is_object() {
                    return Err(wrong_type(key, "a JSON object", field_value));
                }
                event.metadata_json = raw_metadata(line)?;
            }
            "subject_id" => event.subject_id = string_field(key, field_value)?,
            _ => {
                return Err(ParseError::UnknownField {
                    field: key.clone(),
                    accepted: EVENT_FIELDS,
                })
            }
        }
    }
    Ok(event)
}

/// The line's `metadata` object as written, byte for byte. The node hashes and stores
/// these bytes and refuses what its readers would read differently (a repeated key, a
/// number beyond 64 bits or a double); a parsed and re-serialized `Value` would hide
/// those (keeping the last of two keys, rounding the number) and sort the keys.
fn raw_metadata(line: &str) -> Result<String, ParseError> {
    #[derive(serde::Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        metadata: Option<&'a serde_json::value::RawValue>,
    }
    let parsed: Line<'_> = serde_json::from_str(line).map_err(|error| ParseError::InvalidJson {
        column: error.column(),
        message: error.to_string(),
    })?;
    Ok(parsed
        .metadata
        .map(|raw| raw.get().to_string())
        .unwrap_or_default())
}

fn parse_actor(value: &Value) -> Result<Actor, ParseError> {
    let object = object_field("actor", value)?;
    let mut actor = Actor::default();
    for (key, field_value) in object {
        if field_value.is_null() {
            continue;
        }
        let path = format!("actor.{key}");
        match key.as_str() {
            "type" => {
                let name = string_field(&path, field_value)?;
                let actor_type = match name.as_str() {
                    "USER" => ActorType::User,
                    "SERVICE" => ActorType::Service,
                    "SYSTEM" => ActorType::System,
                    _ => {
                        return Err(ParseError::NotOneOf {
                            field: path,
                            accepted: ACTOR_TYPES,
                            got: name,
                        })
                    }
                };
                actor.r#type = actor_type as i32;
            }
            "id" => actor.id = string_field(&path, field_value)?,
            "email" => actor.email = string_field(&path, field_value)?,
            "name" => actor.name = string_field(&path, field_value)?,
            _ => {
                return Err(ParseError::UnknownField {
                    field: path,
                    accepted: ACTOR_FIELDS,
                })
            }
        }
    }
    Ok(actor)
}

fn parse_resource(value: &Value) -> Result<Resource, ParseError> {
    let object = object_field("resource", value)?;
    let mut resource = Resource::default();
    for (key, field_value) in object {
        if field_value.is_null() {
            continue;
        }
        let path = format!("resource.{key}");
        match key.as_str() {
            "type" => resource.r#type = string_field(&path, field_value)?,
            "id" => resource.id = string_field(&path, field_value)?,
            _ => {
                return Err(ParseError::UnknownField {
                    field: path,
                    accepted: RESOURCE_FIELDS,
                })
            }
        }
    }
    Ok(resource)
}

fn parse_result(value: &Value) -> Result<EventResult, ParseError> {
    let name = string_field("result", value)?;
    match name.as_str() {
        "SUCCESS" => Ok(EventResult::Success),
        "FAILURE" => Ok(EventResult::Failure),
        "DENIED" => Ok(EventResult::Denied),
        _ => Err(ParseError::NotOneOf {
            field: "result".to_string(),
            accepted: RESULTS,
            got: name,
        }),
    }
}

fn parse_time(field: &str, value: &Value) -> Result<Timestamp, ParseError> {
    let text = string_field(field, value)?;
    let Ok(time) = DateTime::parse_from_rfc3339(&text) else {
        return Err(ParseError::NotATime {
            field: field.to_string(),
            got: text,
        });
    };
    // A leap second (":60") reads as nanos >= 1e9, which protobuf timestamps forbid.
    let nanos = time.timestamp_subsec_nanos().min(999_999_999);
    Ok(Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(nanos).expect("nanos below 1e9 fit in i32"),
    })
}

fn string_field(field: &str, value: &Value) -> Result<String, ParseError> {
    match value {
        Value::String(text) => Ok(text.clone()),
        other => Err(wrong_type(field, "a string", other)),
    }
}

fn object_field<'a>(field: &str, value: &'a Value) -> Result<&'a Map<String, Value>, ParseError> {
    match value {
        Value::Object(object) => Ok(object),
        other => Err(wrong_type(field, "a JSON object", other)),
    }
}

fn wrong_type(field: &str, expected: &'static str, value: &Value) -> ParseError {
    ParseError::WrongType {
        field: field.to_string(),
        expected,
        got: kind_name(value),
    }
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// An event in the input shape, fields in the input's order. Empty fields are left out.
#[derive(Debug, Serialize)]
struct EventJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    event_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tenant_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<ActorJson<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<ResourceJson<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'static str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    ip_address: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    user_agent: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    request_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    session_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    occurred_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<MetadataJson<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    subject_id: &'a str,
}

/// Stored metadata: its JSON text spliced in as it is, or a string if it is not JSON.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum MetadataJson<'a> {
    Raw(&'a serde_json::value::RawValue),
    Text(&'a str),
}

#[derive(Debug, Serialize)]
struct ActorJson<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    actor_type: Option<&'static str>,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    email: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
}

#[derive(Debug, Serialize)]
struct ResourceJson<'a> {
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    resource_type: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
}

/// A stored event: the event's fields followed by what the ledger added.
#[derive(Debug, Serialize)]
struct StoredEventJson<'a> {
    #[serde(flatten)]
    event: EventJson<'a>,
    stream: &'a str,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingested_at: Option<String>,
    leaf_hash: String,
    log_index: u64,
}

fn event_json(event: &Event) -> EventJson<'_> {
    let actor = event.actor.as_ref().map(|actor| ActorJson {
        actor_type: match ActorType::try_from(actor.r#type) {
            Ok(ActorType::User) => Some("USER"),
            Ok(ActorType::Service) => Some("SERVICE"),
            Ok(ActorType::System) => Some("SYSTEM"),
            Ok(ActorType::Unspecified) | Err(_) => None,
        },
        id: &actor.id,
        email: &actor.email,
        name: &actor.name,
    });
    let resource = event.resource.as_ref().map(|resource| ResourceJson {
        resource_type: &resource.r#type,
        id: &resource.id,
    });
    let result = match EventResult::try_from(event.result) {
        Ok(EventResult::Success) => Some("SUCCESS"),
        Ok(EventResult::Failure) => Some("FAILURE"),
        Ok(EventResult::Denied) => Some("DENIED"),
        Ok(EventResult::Unspecified) | Err(_) => None,
    };
    // Metadata is stored as a JSON string; it is shown as the object it encodes, in the
    // stored bytes (the ones the leaf hash covers, keys in their order), or as the raw
    // string should it ever not parse.
    let metadata = if event.metadata_json.is_empty() {
        None
    } else {
        Some(
            match serde_json::from_str::<&serde_json::value::RawValue>(&event.metadata_json) {
                Ok(raw) => MetadataJson::Raw(raw),
                Err(_) => MetadataJson::Text(&event.metadata_json),
            },
        )
    };
    EventJson {
        event_id: &event.event_id,
        tenant_id: &event.tenant_id,
        actor,
        action: &event.action,
        resource,
        result,
        ip_address: &event.ip_address,
        user_agent: &event.user_agent,
        request_id: &event.request_id,
        session_id: &event.session_id,
        occurred_at: event.occurred_at.as_ref().map(format_time),
        metadata,
        subject_id: &event.subject_id,
    }
}

fn stored_event_json(stored: &StoredEvent) -> StoredEventJson<'_> {
    static EMPTY_EVENT: Event = Event {
        event_id: String::new(),
        tenant_id: String::new(),
        actor: None,
        action: String::new(),
        resource: None,
        result: 0,
        occurred_at: None,
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json: String::new(),
        subject_id: String::new(),
    };
    StoredEventJson {
        event: event_json(stored.event.as_ref().unwrap_or(&EMPTY_EVENT)),
        stream: &stored.stream,
        seq: stored.seq,
        ingested_at: stored.ingested_at.as_ref().map(format_time),
        leaf_hash: hex(&stored.leaf_hash),
        log_index: stored.log_index,
    }
}

/// An event as a JSON value in the input shape; `parse_event` reads it back, with the
/// metadata's keys sorted (as a `Value` holds them).
pub fn event_to_json(event: &Event) -> Value {
    serde_json::to_value(event_json(event)).expect("event JSON serializes")
}

/// A stored event as a JSON value: the input shape plus `stream`, `seq`, `ingested_at`,
/// `leaf_hash` (hex) and `log_index`.
pub fn stored_event_to_json(stored: &StoredEvent) -> Value {
    serde_json::to_value(stored_event_json(stored)).expect("stored event JSON serializes")
}

/// [`stored_event_to_json`] as text, keeping the fields in the input's order (a
/// `Value` sorts them). `pretty` indents for people; otherwise one line.
pub fn stored_event_to_string(stored: &StoredEvent, pretty: bool) -> String {
    let shown = stored_event_json(stored);
    let text = if pretty {
        serde_json::to_string_pretty(&shown)
    } else {
        serde_json::to_string(&shown)
    };
    text.expect("stored event JSON serializes")
}

/// RFC 3339 in UTC with as many fractional digits as needed (none, 3, 6 or 9).
pub fn format_time(time: &Timestamp) -> String {
    let nanos = u32::try_from(time.nanos.clamp(0, 999_999_999)).unwrap_or(0);
    match DateTime::<Utc>::from_timestamp(time.seconds, nanos) {
        Some(utc) => utc.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => format!("{}s{}ns", time.seconds, time.nanos),
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD_LINE: &str = r#"{"event_id":"6f1c1d2e-8a4b-4c8e-9a53-0f6a7b1e2c3d","tenant_id":"ten_0001","actor":{"type":"USER","id":"usr_0123456789ab","email":"ada.lovelace@turing-1a2b.example"},"action":"auth.login","resource":{"type":"session","id":"ses_0123456789abcdef"},"result":"SUCCESS","ip_address":"203.0.113.7","user_agent":"curl/8.5.0","request_id":"req_0123456789abcdef01234567","occurred_at":"2025-01-01T00:00:02.719812Z","metadata":{"method":"sso","mfa":true,"geo":"DE","session_ttl_s":3600}}"#;

    fn error_text(line: &str) -> String {
        parse_event(line).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_workload_line() {
        let event = parse_event(GOOD_LINE).unwrap();
        assert_eq!(event.event_id, "6f1c1d2e-8a4b-4c8e-9a53-0f6a7b1e2c3d");
        assert_eq!(event.tenant_id, "ten_0001");
        let actor = event.actor.as_ref().unwrap();
        assert_eq!(actor.r#type, ActorType::User as i32);
        assert_eq!(actor.id, "usr_0123456789ab");
        assert_eq!(actor.email, "ada.lovelace@turing-1a2b.example");
        assert_eq!(event.action, "auth.login");
        assert_eq!(event.resource.as_ref().unwrap().r#type, "session");
        assert_eq!(event.result, EventResult::Success as i32);
        assert_eq!(event.ip_address, "203.0.113.7");
        let occurred_at = event.occurred_at.unwrap();
        assert_eq!(occurred_at.seconds, 1_735_689_602);
        assert_eq!(occurred_at.nanos, 719_812_000);
        let metadata: Value = serde_json::from_str(&event.metadata_json).unwrap();
        assert_eq!(metadata["geo"], "DE");
        assert_eq!(metadata["mfa"], true);
    }

    #[test]
    fn optional_fields_and_null_are_absent() {
        let event = parse_event(r#"{"tenant_id":"ten_0002","session_id":null}"#).unwrap();
        assert_eq!(event.tenant_id, "ten_0002");
        assert!(event.actor.is_none());
        assert!(event.occurred_at.is_none());
        assert_eq!(event.metadata_json, "");
        assert_eq!(event.result, EventResult::Unspecified as i32);
    }

    #[test]
    fn accepts_offsets_and_all_enum_values() {
        let line = r#"{"actor":{"type":"SYSTEM","name":"cron"},"result":"DENIED","occurred_at":"2025-01-01T01:00:00+01:00","subject_id":"usr_1"}"#;
        let event = parse_event(line).unwrap();
        assert_eq!(event.actor.unwrap().r#type, ActorType::System as i32);
        assert_eq!(event.result, EventResult::Denied as i32);
        assert_eq!(event.occurred_at.unwrap().seconds, 1_735_689_600);
        assert_eq!(event.subject_id, "usr_1");
        let service = parse_event(r#"{"actor":{"type":"SERVICE"},"result":"FAILURE"}"#).unwrap();
        assert_eq!(service.actor.unwrap().r#type, ActorType::Service as i32);
        assert_eq!(service.result, EventResult::Failure as i32);
    }

    #[test]
    fn invalid_json_names_the_column() {
        assert_eq!(
            error_text(r#"{"tenant_id": "ten_0001",}"#),
            "invalid JSON at column 26: trailing comma"
        );
        assert!(error_text(r#"{"tenant_id":"#).starts_with("invalid JSON at column 13: "));
        assert!(error_text(r#"{} {}"#).starts_with("invalid JSON at column 4: trailing characters"));
    }

    #[test]
    fn non_object_line() {
        assert_eq!(error_text("[1,2]"), "expected a JSON object, got an array");
        assert_eq!(error_text("\"x\""), "expected a JSON object, got a string");
    }

    #[test]
    fn bad_enum_values_list_what_is_accepted() {
        assert_eq!(
            error_text(r#"{"result":"OK"}"#),
            r#"field "result": expected one of SUCCESS, FAILURE, DENIED, got "OK""#
        );
        assert_eq!(
            error_text(r#"{"actor":{"type":"user"}}"#),
            r#"field "actor.type": expected one of USER, SERVICE, SYSTEM, got "user""#
        );
    }

    #[test]
    fn bad_time() {
        assert_eq!(
            error_text(r#"{"occurred_at":"2025-01-01 00:00"}"#),
            r#"field "occurred_at": not an RFC 3339 time (e.g. 2025-01-01T00:00:02.719812Z), got "2025-01-01 00:00""#
        );
        assert_eq!(
            error_text(r#"{"occurred_at":1735689600}"#),
            r#"field "occurred_at": expected a string, got a number"#
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let top = error_text(r#"{"tenant":"ten_0001"}"#);
        assert!(
            top.starts_with(r#"unknown field "tenant" (accepted: event_id, tenant_id"#),
            "{top}"
        );
        let nested = error_text(r#"{"actor":{"id":"u","role":"admin"}}"#);
        assert_eq!(
            nested,
            r#"unknown field "actor.role" (accepted: type, id, email, name)"#
        );
        let resource = error_text(r#"{"resource":{"kind":"x"}}"#);
        assert_eq!(
            resource,
            r#"unknown field "resource.kind" (accepted: type, id)"#
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(
            error_text(r#"{"tenant_id":7}"#),
            r#"field "tenant_id": expected a string, got a number"#
        );
        assert_eq!(
            error_text(r#"{"actor":"usr_1"}"#),
            r#"field "actor": expected a JSON object, got a string"#
        );
        assert_eq!(
            error_text(r#"{"actor":{"email":["a@b"]}}"#),
            r#"field "actor.email": expected a string, got an array"#
        );
        assert_eq!(
            error_text(r#"{"metadata":"{}"}"#),
            r#"field "metadata": expected a JSON object, got a string"#
        );
    }

    #[test]
    fn metadata_is_sent_and_shown_as_written() {
        // A repeated key and an integer beyond 64 bits: the node refuses these, so the
        // line's bytes go out as they are, not a re-serialization that hides them.
        let line = r#"{"tenant_id":"ten_1","metadata":{"z":1, "x":2,"x":18446744073709551616}}"#;
        let event = parse_event(line).unwrap();
        assert_eq!(
            event.metadata_json,
            r#"{"z":1, "x":2,"x":18446744073709551616}"#
        );
        let stored = StoredEvent {
            event: Some(parse_event(r#"{"metadata":{"z":1, "a":2.50}}"#).unwrap()),
            ..StoredEvent::default()
        };
        let text = stored_event_to_string(&stored, false);
        assert!(
            text.starts_with(r#"{"metadata":{"z":1, "a":2.50},"#),
            "{text}"
        );
        assert!(
            error_text(r#"{"metadata":{},"metadata":{}}"#).contains("duplicate field `metadata`")
        );
    }

    #[test]
    fn event_json_round_trips() {
        let event = parse_event(GOOD_LINE).unwrap();
        let value = event_to_json(&event);
        assert_eq!(value["occurred_at"], "2025-01-01T00:00:02.719812Z");
        let mut again = parse_event(&value.to_string()).unwrap();
        // A `Value` sorts the metadata's keys: the same object, other bytes.
        let metadata = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert_eq!(
            metadata(&again.metadata_json),
            metadata(&event.metadata_json)
        );
        again.metadata_json.clone_from(&event.metadata_json);
        assert_eq!(again, event);
    }

    #[test]
    fn stored_event_shows_ledger_fields_in_order() {
        let stored = StoredEvent {
            event: Some(parse_event(GOOD_LINE).unwrap()),
            stream: "main".to_string(),
            seq: 42,
            ingested_at: Some(Timestamp {
                seconds: 1_735_689_603,
                nanos: 0,
            }),
            leaf_hash: vec![0x00, 0xab, 0xff],
            log_index: 7,
        };
        let value = stored_event_to_json(&stored);
        assert_eq!(value["seq"], 42);
        assert_eq!(value["stream"], "main");
        assert_eq!(value["leaf_hash"], "00abff");
        assert_eq!(value["ingested_at"], "2025-01-01T00:00:03Z");
        assert_eq!(value["actor"]["type"], "USER");
        assert_eq!(value["metadata"]["session_ttl_s"], 3600);
        let text = stored_event_to_string(&stored, false);
        assert!(text.starts_with(r#"{"event_id":"6f1c1d2e"#), "{text}");
        assert!(text.ends_with(r#""seq":42,"ingested_at":"2025-01-01T00:00:03Z","leaf_hash":"00abff","log_index":7}"#), "{text}");
    }
}
