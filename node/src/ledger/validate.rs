//! Validation of producer events: every rule a user can break is named here, and every
//! error names the field and what would be accepted.
//!
//! Pure: the caller passes the clock reading, so the simulation validates the same way.

use trail_proto::v1;

use super::event::{ActorKind, EventRecord, Outcome};

pub const TENANT_ID_BYTES_MAX: usize = 64;
pub const EVENT_ID_BYTES_MAX: usize = 128;
pub const ID_BYTES_MAX: usize = 256;
pub const ACTION_BYTES_MAX: usize = 128;
pub const RESOURCE_TYPE_BYTES_MAX: usize = 128;
pub const EMAIL_BYTES_MAX: usize = 320;
pub const USER_AGENT_BYTES_MAX: usize = 1024;
pub const METADATA_BYTES_MAX: usize = 8 * 1024;
pub const METADATA_DEPTH_MAX: usize = 8;
/// Producers' clocks drift; an event from further in the future is a bug or an attack on
/// time-range queries.
pub const FUTURE_SKEW_NS_MAX: i64 = 5 * 60 * 1_000_000_000;
/// Events are rejected before 2000-01-01T00:00:00Z: an earlier time is a unit error
/// (seconds sent as milliseconds, or an unset clock).
pub const OCCURRED_AT_NS_MIN: i64 = 946_684_800 * 1_000_000_000;
/// The most events one `RecordBatch` may carry (~5.5 MB of workload events).
pub const BATCH_EVENTS_MAX: usize = 10_000;

/// A broken rule: the field (dotted path as in the protobuf) and a readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> FieldError {
        FieldError {
            field,
            message: message.into(),
        }
    }
}

/// Validates one producer event. `now_ns` is the node's clock; `generated_event_id` is
/// used when the producer left `event_id` empty (the node makes a ULID).
///
/// On success the strings are moved out of `event` into the record (this runs once per
/// ingested event, so no copies); on error `event` is left as it was.
pub fn validate_event(
    event: &mut v1::Event,
    now_ns: i64,
    generated_event_id: impl FnOnce() -> String,
) -> Result<EventRecord, FieldError> {
    check_tenant_id(&event.tenant_id)?;
    if !event.event_id.is_empty() {
        check_token("event_id", &event.event_id, EVENT_ID_BYTES_MAX)?;
    }

    let actor = event
        .actor
        .as_ref()
        .ok_or_else(|| FieldError::new("actor", "is required"))?;
    let actor_kind = match v1::ActorType::try_from(actor.r#type) {
        Ok(v1::ActorType::User) => ActorKind::User,
        Ok(v1::ActorType::Service) => ActorKind::Service,
        Ok(v1::ActorType::System) => ActorKind::System,
        Ok(v1::ActorType::Unspecified) => {
            return Err(FieldError::new(
                "actor.type",
                "is required: one of USER, SERVICE, SYSTEM",
            ))
        }
        Err(_) => {
            return Err(FieldError::new(
                "actor.type",
                format!(
                    "unknown value {}: expected one of USER, SERVICE, SYSTEM",
                    actor.r#type
                ),
            ))
        }
    };
    check_required("actor.id", &actor.id, ID_BYTES_MAX)?;
    check_optional("actor.email", &actor.email, EMAIL_BYTES_MAX)?;
    check_optional("actor.name", &actor.name, ID_BYTES_MAX)?;

    check_action(&event.action)?;

    if let Some(resource) = &event.resource {
        check_required("resource.type", &resource.r#type, RESOURCE_TYPE_BYTES_MAX)?;
        check_optional("resource.id", &resource.id, ID_BYTES_MAX)?;
    }

    let outcome = match v1::Result::try_from(event.result) {
        Ok(v1::Result::Success) => Outcome::Success,
        Ok(v1::Result::Failure) => Outcome::Failure,
        Ok(v1::Result::Denied) => Outcome::Denied,
        Ok(v1::Result::Unspecified) => {
            return Err(FieldError::new(
                "result",
                "is required: one of SUCCESS, FAILURE, DENIED",
            ))
        }
        Err(_) => {
            return Err(FieldError::new(
                "result",
                format!(
                    "unknown value {}: expected one of SUCCESS, FAILURE, DENIED",
                    event.result
                ),
            ))
        }
    };

    let occurred_at_ns = validate_occurred_at(event.occurred_at.as_ref(), now_ns)?;

    check_optional("request_id", &event.request_id, ID_BYTES_MAX)?;
    check_optional("session_id", &event.session_id, ID_BYTES_MAX)?;
    if !event.ip_address.is_empty() && event.ip_address.parse::<std::net::IpAddr>().is_err() {
        return Err(FieldError::new(
            "ip_address",
            "is not an IPv4 or IPv6 address",
        ));
    }
    check_optional("user_agent", &event.user_agent, USER_AGENT_BYTES_MAX)?;
    validate_metadata(&event.metadata_json)?;
    check_optional("subject_id", &event.subject_id, ID_BYTES_MAX)?;

    // Every check passed: move the strings into the record.
    let take = std::mem::take::<String>;
    let event_id = if event.event_id.is_empty() {
        generated_event_id()
    } else {
        take(&mut event.event_id)
    };
    let mut actor = event.actor.take().expect("checked above");
    let resource = event.resource.take().unwrap_or_default();
    let subject_id = if event.subject_id.is_empty() {
        actor.id.clone()
    } else {
        take(&mut event.subject_id)
    };
    Ok(EventRecord {
        event_id,
        tenant_id: take(&mut event.tenant_id),
        actor_kind,
        actor_id: take(&mut actor.id),
        actor_email: take(&mut actor.email),
        actor_name: take(&mut actor.name),
        action: take(&mut event.action),
        resource_type: resource.r#type,
        resource_id: resource.id,
        outcome,
        occurred_at_ns,
        request_id: take(&mut event.request_id),
        session_id: take(&mut event.session_id),
        ip_address: take(&mut event.ip_address),
        user_agent: take(&mut event.user_agent),
        metadata_json: take(&mut event.metadata_json),
        subject_id,
    })
}

/// Tenant ids are path segments in the REST API and key prefixes in storage: 1 to 64
/// characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
pub fn validate_tenant_id(tenant_id: &str) -> Result<String, FieldError> {
    check_tenant_id(tenant_id)?;
    Ok(tenant_id.to_string())
}

/// An event id a read names (`GetEvent`, `GetProof`, the REST path): ingest's rule,
/// so an id no event can have is refused before it becomes a storage key (keys over
/// 64 KiB reach an assert inside lsm-tree). Empty is refused: a read needs an id.
pub fn validate_event_id(field: &'static str, event_id: &str) -> Result<(), FieldError> {
    if event_id.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    check_token(field, event_id, EVENT_ID_BYTES_MAX)
}

fn check_tenant_id(tenant_id: &str) -> Result<(), FieldError> {
    const RULE: &str = "1 to 64 characters of A-Z a-z 0-9 _ . -, starting with a letter or digit";
    if tenant_id.is_empty() {
        return Err(FieldError::new(
            "tenant_id",
            format!("is required ({RULE})"),
        ));
    }
    let first_ok = tenant_id
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric());
    let chars_ok = tenant_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    check_visible("tenant_id", tenant_id)?;
    if tenant_id.len() > TENANT_ID_BYTES_MAX || !first_ok || !chars_ok {
        return Err(FieldError::new(
            "tenant_id",
            format!(
                "{:?} is not a valid tenant id: {RULE}",
                truncated(tenant_id)
            ),
        ));
    }
    Ok(())
}

/// Actions are dotted verbs: segments of `[a-z0-9_-]` joined by dots, e.g. `role.assign`.
fn check_action(action: &str) -> Result<(), FieldError> {
    const RULE: &str = "a dotted verb such as \"auth.login\": segments of a-z 0-9 _ - joined by dots, at most 128 bytes";
    if action.is_empty() {
        return Err(FieldError::new("action", format!("is required ({RULE})")));
    }
    check_visible("action", action)?;
    let segments_ok = action.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    });
    if action.len() > ACTION_BYTES_MAX || !segments_ok {
        return Err(FieldError::new(
            "action",
            format!("{:?} is not valid: {RULE}", truncated(action)),
        ));
    }
    Ok(())
}

fn validate_occurred_at(
    occurred_at: Option<&prost_types::Timestamp>,
    now_ns: i64,
) -> Result<i64, FieldError> {
    let timestamp = occurred_at.ok_or_else(|| FieldError::new("occurred_at", "is required"))?;
    if !(0..1_000_000_000).contains(&timestamp.nanos) {
        return Err(FieldError::new(
            "occurred_at",
            format!("nanos {} is outside 0..999999999", timestamp.nanos),
        ));
    }
    let occurred_at_ns = timestamp
        .seconds
        .checked_mul(1_000_000_000)
        .and_then(|ns| ns.checked_add(i64::from(timestamp.nanos)))
        .ok_or_else(|| FieldError::new("occurred_at", "is out of range"))?;
    if occurred_at_ns < OCCURRED_AT_NS_MIN {
        return Err(FieldError::new(
            "occurred_at",
            "is before 2000-01-01T00:00:00Z (seconds sent where milliseconds were meant?)",
        ));
    }
    let skew_ns = occurred_at_ns.saturating_sub(now_ns);
    if skew_ns > FUTURE_SKEW_NS_MAX {
        return Err(FieldError::new(
            "occurred_at",
            format!(
                "is {} s in the future; at most 300 s of clock skew is accepted",
                skew_ns / 1_000_000_000
            ),
        ));
    }
    Ok(occurred_at_ns)
}

/// Metadata is a small JSON object: at most 8 KiB and 8 levels deep, so one event can
/// not blow up storage, the index or a reader's memory. It is hashed and stored as the
/// producer's bytes, and every reader (REST, `trailctl`, a JavaScript `JSON.parse`) must
/// see the same object in them; so text that parsers read differently is refused: a
/// repeated key (most keep the last, some the first), a lone UTF-16 surrogate escape
/// (no UTF-8 spelling: parsers fail or substitute U+FFFD), and a number no 64-bit integer
/// or finite double holds (read as infinity, zero or a rounded value).
fn validate_metadata(metadata_json: &str) -> Result<(), FieldError> {
    if metadata_json.is_empty() {
        return Ok(());
    }
    if metadata_json.len() > METADATA_BYTES_MAX {
        return Err(FieldError::new(
            "metadata_json",
            format!(
                "is {} bytes; at most {METADATA_BYTES_MAX} bytes are accepted",
                metadata_json.len()
            ),
        ));
    }
    // Escapes and numbers first: serde_json would report a lone surrogate as "unexpected
    // end of hex escape" and an integer beyond 64 bits not at all (it reads a double).
    check_json_tokens(metadata_json)
        .map_err(|message| FieldError::new("metadata_json", message))?;
    if !metadata_json.trim_start().starts_with('{') {
        // Still say so when it is not JSON at all.
        if serde_json::from_str::<serde::de::IgnoredAny>(metadata_json).is_ok() {
            return Err(FieldError::new(
                "metadata_json",
                "must be a JSON object such as {\"key\": \"value\"}",
            ));
        }
    }
    // One pass without building a tree of values (this runs once per ingested event):
    // syntax, nesting and repeated keys. With the token scan above, ~0.7 us for a
    // 150-byte object of 10 keys in a release build, against ~0.2 us for syntax alone.
    let problem = std::cell::Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(metadata_json);
    let parsed = serde::de::DeserializeSeed::deserialize(
        StrictJson {
            depth: 1,
            problem: &problem,
        },
        &mut deserializer,
    )
    .and_then(|()| deserializer.end());
    let Err(error) = parsed else {
        return Ok(());
    };
    let at = format!("line {} column {}", error.line(), error.column());
    let message = match problem.take() {
        Some(JsonProblem::DuplicateKey(key)) => format!(
            "has the key {key:?} twice in one object (at {at}); readers disagree on which \
             value counts, so each key may appear once"
        ),
        Some(JsonProblem::TooDeep) => format!(
            "nests more than {METADATA_DEPTH_MAX} levels deep (at {at}); at most \
             {METADATA_DEPTH_MAX} are accepted"
        ),
        None => format!("is not valid JSON: {error}"),
    };
    Err(FieldError::new("metadata_json", message))
}

/// What [`StrictJson`] refused; serde_json's error carries only the position.
#[derive(Debug)]
enum JsonProblem {
    DuplicateKey(String),
    TooDeep,
}

/// Visits one JSON value and everything in it, refusing repeated keys and nesting beyond
/// [`METADATA_DEPTH_MAX`] (`depth` counts the objects and arrays around the value,
/// itself included). Builds nothing but one set of keys per object.
#[derive(Clone, Copy)]
struct StrictJson<'a> {
    depth: usize,
    problem: &'a std::cell::Cell<Option<JsonProblem>>,
}

impl StrictJson<'_> {
    fn fail<E>(self, problem: JsonProblem) -> E
    where
        E: serde::de::Error,
    {
        self.problem.set(Some(problem));
        E::custom("metadata_json")
    }

    fn enter<E>(self) -> Result<Self, E>
    where
        E: serde::de::Error,
    {
        if self.depth > METADATA_DEPTH_MAX {
            return Err(self.fail(JsonProblem::TooDeep));
        }
        Ok(StrictJson {
            depth: self.depth + 1,
            problem: self.problem,
        })
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for StrictJson<'_> {
    type Value = ();

    fn deserialize<D>(self, deserializer: D) -> Result<(), D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StrictJson<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    /// serde_json has already refused a lone surrogate escape in a string it hands over.
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A>(self, mut seq: A) -> Result<(), A::Error>
    where
        A: serde::de::SeqAccess<'de>,
    {
        let inner = self.enter()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A>(self, mut map: A) -> Result<(), A::Error>
    where
        A: serde::de::MapAccess<'de>,
    {
        let inner = self.enter()?;
        // Keys are compared unescaped: {"a":1,"\u0061":2} repeats "a". Most objects
        // have a handful of keys, which a scan of a list checks faster than hashing
        // (~1 us less per event than a HashSet for ~10 keys); a longer object (an 8 KiB
        // one has at most ~1,600 keys) moves to a set, so the check stays linear.
        const SCANNED_KEYS_MAX: usize = 16;
        let mut listed: Vec<std::borrow::Cow<'de, str>> = Vec::new();
        let mut hashed: std::collections::HashSet<std::borrow::Cow<'de, str>> =
            std::collections::HashSet::new();
        while let Some(key) = map.next_key_seed(JsonKey)? {
            let repeated = if hashed.is_empty() && listed.len() < SCANNED_KEYS_MAX {
                listed.contains(&key)
            } else {
                if hashed.is_empty() {
                    hashed.extend(listed.drain(..));
                }
                hashed.contains(&key)
            };
            if repeated {
                return Err(self.fail(JsonProblem::DuplicateKey(key.into_owned())));
            }
            if hashed.is_empty() {
                listed.push(key);
            } else {
                hashed.insert(key);
            }
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct JsonKey;

impl<'de> serde::de::DeserializeSeed<'de> for JsonKey {
    type Value = std::borrow::Cow<'de, str>;

    fn deserialize<D>(self, deserializer: D) -> Result<Self::Value, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        deserializer.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonKey {
    type Value = std::borrow::Cow<'de, str>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Borrowed(key))
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(std::borrow::Cow::Owned(key.to_string()))
    }
}

/// Scans JSON text for what parses but does not round-trip: a `\u` escape of a UTF-16
/// surrogate without its other half, and a number outside what readers hold exactly (an
/// integer beyond 64 bits, a decimal that overflows a double to infinity or underflows a
/// non-zero value to zero). Runs on any text; syntax is the parser's to judge.
fn check_json_tokens(json: &str) -> Result<(), String> {
    let bytes = json.as_bytes();
    let position = |offset: usize| {
        let before = &bytes[..offset];
        let line = before.iter().filter(|&&byte| byte == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&byte| byte == b'\n')
            .map_or(0, |newline| newline + 1);
        format!("line {line} column {}", offset - line_start + 1)
    };
    let hex_escape = |offset: usize| -> Option<u16> {
        // `offset` is at the backslash of `\uXXXX`.
        if bytes.get(offset..offset + 2)? != b"\\u" {
            return None;
        }
        let digits = std::str::from_utf8(bytes.get(offset + 2..offset + 6)?).ok()?;
        u16::from_str_radix(digits, 16).ok()
    };
    let mut offset = 0;
    let mut in_string = false;
    while offset < bytes.len() {
        let byte = bytes[offset];
        if in_string {
            match byte {
                b'"' => in_string = false,
                b'\\' => {
                    if let Some(unit) = hex_escape(offset) {
                        if (0xD800..=0xDBFF).contains(&unit) {
                            let low = hex_escape(offset + 6);
                            if !low.is_some_and(|low| (0xDC00..=0xDFFF).contains(&low)) {
                                return Err(lone_surrogate(unit, &position(offset)));
                            }
                            offset += 12;
                            continue;
                        }
                        if (0xDC00..=0xDFFF).contains(&unit) {
                            return Err(lone_surrogate(unit, &position(offset)));
                        }
                        offset += 6;
                        continue;
                    }
                    // Any other escape is two bytes long.
                    offset += 2;
                    continue;
                }
                _ => {}
            }
            offset += 1;
            continue;
        }
        if byte == b'"' {
            in_string = true;
            offset += 1;
            continue;
        }
        if byte == b'-' || byte.is_ascii_digit() {
            let length = bytes[offset..]
                .iter()
                .position(|&byte| !matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                .unwrap_or(bytes.len() - offset);
            let number = &json[offset..offset + length];
            check_json_number(number).map_err(|reason| {
                format!(
                    "has the number {} (at {}), which {reason}",
                    truncated(number),
                    position(offset)
                )
            })?;
            offset += length;
            continue;
        }
        offset += 1;
    }
    Ok(())
}

fn lone_surrogate(unit: u16, at: &str) -> String {
    format!(
        "has a lone UTF-16 surrogate \\u{unit:04x} (at {at}): a surrogate escape stands for \
         a character only as a pair such as \\ud83d\\ude00, and alone has no UTF-8 spelling"
    )
}

/// Why a JSON number token does not round-trip, if it does not.
fn check_json_number(number: &str) -> Result<(), &'static str> {
    let is_integer = !number.contains(['.', 'e', 'E']);
    if is_integer {
        if number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok() {
            return Ok(());
        }
        if number
            .trim_start_matches('-')
            .bytes()
            .all(|byte| byte.is_ascii_digit())
        {
            return Err(
                "is out of range: integers must lie between -9223372036854775808 \
                        and 18446744073709551615 (64 bits)",
            );
        }
        // Not a JSON number at all: the parser reports it.
        return Ok(());
    }
    let Ok(value) = number.parse::<f64>() else {
        return Ok(());
    };
    if value.is_infinite() {
        return Err("is out of range: beyond the largest double (about 1.8e308)");
    }
    let mantissa = number.split(['e', 'E']).next().unwrap_or(number);
    let is_nonzero = mantissa.bytes().any(|byte| matches!(byte, b'1'..=b'9'));
    if value == 0.0 && is_nonzero {
        return Err(
            "is out of range: closer to zero than the smallest double (about 4.9e-324) \
                    and would read as 0",
        );
    }
    Ok(())
}

fn check_required(field: &'static str, value: &str, bytes_max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    check_optional(field, value, bytes_max)
}

fn check_optional(field: &'static str, value: &str, bytes_max: usize) -> Result<(), FieldError> {
    if value.len() > bytes_max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {bytes_max} are accepted", value.len()),
        ));
    }
    check_visible(field, value)
}

/// Refuses characters that do not show as themselves: control characters, and Unicode
/// format characters (general category Cf: bidi overrides and isolates, zero-width
/// spaces and joiners, the byte order mark, ...) together with the line and paragraph
/// separators. They make two different ids, names or actions look the same on screen
/// ("usr_\u{202E}nimda" shows as "usr_admin"), or reorder the text around them in a log
/// line or table.
fn check_visible(field: &'static str, value: &str) -> Result<(), FieldError> {
    let Some((character, kind)) = value
        .chars()
        .find_map(|character| invisible_kind(character).map(|kind| (character, kind)))
    else {
        return Ok(());
    };
    Err(FieldError::new(
        field,
        format!(
            "contains U+{:04X} ({kind}); control and invisible format characters are \
             refused because they make different values look alike",
            u32::from(character)
        ),
    ))
}

/// What kind of character `character` is, if it is one [`check_visible`] refuses. The
/// Cf ranges are those of Unicode 15.1 (std has no general category lookup).
fn invisible_kind(character: char) -> Option<&'static str> {
    if character.is_control() {
        return Some("a control character");
    }
    match u32::from(character) {
        0x061C | 0x200E | 0x200F | 0x202A..=0x202E | 0x2066..=0x2069 => Some("a bidi control"),
        0x200B..=0x200D | 0x2060 | 0xFEFF => Some("a zero-width character"),
        0x2028 | 0x2029 => Some("a line separator"),
        0x00AD
        | 0x0600..=0x0605
        | 0x06DD
        | 0x070F
        | 0x0890..=0x0891
        | 0x08E2
        | 0x180E
        | 0x2061..=0x2064
        | 0x206A..=0x206F
        | 0xFFF9..=0xFFFB
        | 0x110BD
        | 0x110CD
        | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A
        | 0xE0001
        | 0xE0020..=0xE007F => Some("an invisible format character"),
        _ => None,
    }
}

/// Idempotency keys: printable ASCII without spaces, so they are safe in URLs and logs.
fn check_token(field: &'static str, value: &str, bytes_max: usize) -> Result<(), FieldError> {
    if value.len() > bytes_max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {bytes_max} are accepted", value.len()),
        ));
    }
    check_visible(field, value)?;
    if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(FieldError::new(
            field,
            "may contain only printable ASCII without spaces",
        ));
    }
    Ok(())
}

fn truncated(value: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 40;
    if value.chars().count() <= SHOWN_CHARS_MAX {
        return value.to_string();
    }
    let prefix: String = value.chars().take(SHOWN_CHARS_MAX).collect();
    format!("{prefix}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_NS: i64 = 1_767_225_600 * 1_000_000_000; // 2026-01-01

    fn good() -> v1::Event {
        v1::Event {
            event_id: "evt_1".into(),
            tenant_id: "ten_0001".into(),
            actor: Some(v1::Actor {
                r#type: v1::ActorType::User as i32,
                id: "usr_1".into(),
                email: "ada@example.com".into(),
                name: String::new(),
            }),
            action: "auth.login".into(),
            resource: Some(v1::Resource {
                r#type: "session".into(),
                id: "ses_1".into(),
            }),
            result: v1::Result::Success as i32,
            occurred_at: Some(prost_types::Timestamp {
                seconds: NOW_NS / 1_000_000_000 - 60,
                nanos: 5,
            }),
            ip_address: "203.0.113.7".into(),
            metadata_json: r#"{"mfa": true}"#.into(),
            ..Default::default()
        }
    }

    fn field_of(event: v1::Event) -> &'static str {
        validate_event(&mut event.clone(), NOW_NS, || "gen".into())
            .unwrap_err()
            .field
    }

    #[test]
    fn accepts_a_good_event_and_fills_defaults() {
        let mut event = good();
        event.event_id.clear();
        let record = validate_event(&mut event, NOW_NS, || "01GENERATED".into()).unwrap();
        assert_eq!(record.event_id, "01GENERATED");
        assert_eq!(record.subject_id, "usr_1");
        assert_eq!(record.occurred_at_ns, NOW_NS - 60_000_000_000 + 5);
    }

    #[test]
    fn each_rule_names_its_field() {
        let mut e = good();
        e.tenant_id = "".into();
        assert_eq!(field_of(e), "tenant_id");
        let mut e = good();
        e.tenant_id = "bad tenant!".into();
        assert_eq!(field_of(e), "tenant_id");
        let mut e = good();
        e.actor = None;
        assert_eq!(field_of(e), "actor");
        let mut e = good();
        e.actor.as_mut().unwrap().r#type = 42;
        assert_eq!(field_of(e), "actor.type");
        let mut e = good();
        e.actor.as_mut().unwrap().id.clear();
        assert_eq!(field_of(e), "actor.id");
        let mut e = good();
        e.action = "Auth Login".into();
        assert_eq!(field_of(e), "action");
        let mut e = good();
        e.action.clear();
        assert_eq!(field_of(e), "action");
        let mut e = good();
        e.result = 9;
        assert_eq!(field_of(e), "result");
        let mut e = good();
        e.occurred_at = None;
        assert_eq!(field_of(e), "occurred_at");
        let mut e = good();
        e.occurred_at.as_mut().unwrap().seconds = NOW_NS / 1_000_000_000 + 301;
        assert_eq!(field_of(e), "occurred_at");
        let mut e = good();
        e.metadata_json = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1_000_000));
        assert_eq!(field_of(e), "metadata_json");
        let mut e = good();
        e.metadata_json = "[1,2]".into();
        assert_eq!(field_of(e), "metadata_json");
        let mut e = good();
        e.metadata_json = format!("{}1{}", r#"{"a":"#.repeat(9), "}".repeat(9));
        assert_eq!(field_of(e), "metadata_json");
        let mut e = good();
        e.ip_address = "not-an-ip".into();
        assert_eq!(field_of(e), "ip_address");
        let mut e = good();
        e.event_id = "has space".into();
        assert_eq!(field_of(e), "event_id");
        let mut e = good();
        e.resource.as_mut().unwrap().r#type.clear();
        assert_eq!(field_of(e), "resource.type");
    }

    #[test]
    fn metadata_depth_ignores_brackets_in_strings() {
        let mut eight = good();
        eight.metadata_json = format!("{}1{}", r#"{"a":"#.repeat(8), "}".repeat(8));
        assert!(validate_event(&mut eight, NOW_NS, || "gen".into()).is_ok());
        let mut nine = good();
        nine.metadata_json = format!(r#"{{"a":[[[[[[[[1]]]]]]]],"b":"{}"}}"#, "]".repeat(9));
        assert_eq!(field_of(nine), "metadata_json");
        let mut event = good();
        event.metadata_json = format!(r#"{{"deep":"{}"}}"#, "[".repeat(50));
        assert!(validate_event(&mut event.clone(), NOW_NS, || "gen".into()).is_ok());
    }

    fn metadata_error(metadata_json: &str) -> String {
        let mut event = good();
        event.metadata_json = metadata_json.to_string();
        let error = validate_event(&mut event, NOW_NS, || "gen".into()).unwrap_err();
        assert_eq!(error.field, "metadata_json", "{metadata_json}: {error}");
        error.message
    }

    #[test]
    fn metadata_that_readers_would_read_differently_is_refused() {
        let cases = [
            (
                r#"{"x":1,"x":2}"#,
                r#"has the key "x" twice in one object (at line 1 column 10)"#,
            ),
            (r#"{"a":{"x":1,"y":2,"x":1}}"#, r#"has the key "x" twice"#),
            (r#"{"a":1,"\u0061":2}"#, r#"has the key "a" twice"#),
            (
                r#"{"k":"\ud800"}"#,
                r"has a lone UTF-16 surrogate \ud800 (at line 1 column 7)",
            ),
            (r#"{"k":"\udc00"}"#, r"has a lone UTF-16 surrogate \udc00"),
            (
                r#"{"k":"\ud800\u0041"}"#,
                r"has a lone UTF-16 surrogate \ud800",
            ),
            (r#"{"\uDBFF":1}"#, r"has a lone UTF-16 surrogate \udbff"),
            (
                r#"{"n":1e400}"#,
                "has the number 1e400 (at line 1 column 6), which is out of range",
            ),
            (r#"{"n":[-1.5E+309]}"#, "has the number -1.5E+309"),
            (
                r#"{"n":18446744073709551616}"#,
                "has the number 18446744073709551616",
            ),
            (
                r#"{"n":-9223372036854775809}"#,
                concat!(
                    "has the number -9223372036854775809 (at line 1 column 6), which is out ",
                    "of range: integers must lie between"
                ),
            ),
            (
                "{\n \"n\": 1e-400}",
                "has the number 1e-400 (at line 2 column 7)",
            ),
            (
                "{\n\"s\":\"\\ud800\"}",
                r"has a lone UTF-16 surrogate \ud800 (at line 2 column 6)",
            ),
        ];
        // Past the keys a list scans, in the set.
        let keys: Vec<String> = (0..40).map(|key| format!("\"k{key}\":{key}")).collect();
        let long = format!("{{{},\"k3\":0}}", keys.join(","));
        assert!(metadata_error(&long).starts_with(r#"has the key "k3" twice"#));
        let mut distinct = good();
        distinct.metadata_json = format!("{{{}}}", keys.join(","));
        validate_event(&mut distinct, NOW_NS, || "gen".into()).unwrap();
        for (metadata_json, expected) in cases {
            let message = metadata_error(metadata_json);
            assert!(message.starts_with(expected), "{metadata_json}: {message}");
        }
    }

    #[test]
    fn metadata_that_round_trips_is_accepted() {
        let mut event = good();
        event.metadata_json = concat!(
            r#"{"emoji":"\ud83d\ude00","escaped":"\\ud800","u64":18446744073709551615,"#,
            r#""i64":-9223372036854775808,"big":1.5e300,"zero":0.0,"zero_exponent":0e5,"#,
            r#""tiny":5e-324,"same_key_in_two_objects":[{"x":1},{"x":2}],"x":{"x":null}}"#
        )
        .to_string();
        validate_event(&mut event, NOW_NS, || "gen".into()).unwrap();
    }

    #[test]
    fn invisible_characters_in_ids_names_and_actions_are_refused_by_code_point() {
        type Setter = fn(&mut v1::Event, &str);
        let fields: [(&str, Setter); 12] = [
            ("tenant_id", |e, v| e.tenant_id = format!("ten{v}1")),
            ("event_id", |e, v| e.event_id = format!("evt{v}1")),
            ("actor.id", |e, v| {
                e.actor.as_mut().unwrap().id = format!("usr{v}1")
            }),
            ("actor.name", |e, v| {
                e.actor.as_mut().unwrap().name = format!("Ada{v}")
            }),
            ("actor.email", |e, v| {
                e.actor.as_mut().unwrap().email = format!("a{v}@b.c")
            }),
            ("action", |e, v| e.action = format!("auth.{v}login")),
            ("resource.type", |e, v| {
                e.resource.as_mut().unwrap().r#type = format!("s{v}")
            }),
            ("resource.id", |e, v| {
                e.resource.as_mut().unwrap().id = format!("ses{v}1")
            }),
            ("request_id", |e, v| e.request_id = format!("req{v}1")),
            ("session_id", |e, v| e.session_id = format!("ses{v}1")),
            ("subject_id", |e, v| e.subject_id = format!("usr{v}1")),
            ("user_agent", |e, v| e.user_agent = format!("curl{v}/8")),
        ];
        let characters = [
            ('\u{202E}', "U+202E (a bidi control)"),
            ('\u{2066}', "U+2066 (a bidi control)"),
            ('\u{200F}', "U+200F (a bidi control)"),
            ('\u{200B}', "U+200B (a zero-width character)"),
            ('\u{FEFF}', "U+FEFF (a zero-width character)"),
            ('\u{2028}', "U+2028 (a line separator)"),
            ('\u{00AD}', "U+00AD (an invisible format character)"),
            ('\u{E0041}', "U+E0041 (an invisible format character)"),
            ('\u{0007}', "U+0007 (a control character)"),
            ('\u{009B}', "U+009B (a control character)"),
        ];
        for (field, set) in fields {
            for (character, named) in characters {
                let mut event = good();
                set(&mut event, &character.to_string());
                let error = validate_event(&mut event, NOW_NS, || "gen".into()).unwrap_err();
                assert_eq!(error.field, field, "{error}");
                assert!(
                    error.message.starts_with(&format!("contains {named}")),
                    "{error}"
                );
            }
        }
        // Visible non-ASCII text is still accepted where it was.
        let mut event = good();
        event.actor.as_mut().unwrap().name = "Zoë Ångström 李".into();
        event.resource.as_mut().unwrap().id = "ünïcödé".into();
        validate_event(&mut event, NOW_NS, || "gen".into()).unwrap();
    }

    #[test]
    fn skew_inside_five_minutes_is_accepted() {
        let mut event = good();
        event.occurred_at.as_mut().unwrap().seconds = NOW_NS / 1_000_000_000 + 299;
        assert!(validate_event(&mut event.clone(), NOW_NS, || "gen".into()).is_ok());
    }
}
