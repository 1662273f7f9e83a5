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
/// not blow up storage, the index or a reader's memory.
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
    // Validate without building a tree of values: this runs once per ingested event.
    serde_json::from_str::<serde::de::IgnoredAny>(metadata_json)
        .map_err(|error| FieldError::new("metadata_json", format!("is not valid JSON: {error}")))?;
    if !metadata_json.trim_start().starts_with('{') {
        return Err(FieldError::new(
            "metadata_json",
            "must be a JSON object such as {\"key\": \"value\"}",
        ));
    }
    let depth = json_depth(metadata_json);
    if depth > METADATA_DEPTH_MAX {
        return Err(FieldError::new(
            "metadata_json",
            format!("nests {depth} levels deep; at most {METADATA_DEPTH_MAX} are accepted"),
        ));
    }
    Ok(())
}

/// Deepest nesting of objects and arrays in a JSON text that has already been parsed
/// successfully, counting brackets outside strings.
fn json_depth(json: &str) -> usize {
    let mut depth = 0usize;
    let mut depth_max = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for byte in json.bytes() {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                depth_max = depth_max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    depth_max
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
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(())
}

/// Idempotency keys: printable ASCII without spaces, so they are safe in URLs and logs.
fn check_token(field: &'static str, value: &str, bytes_max: usize) -> Result<(), FieldError> {
    if value.len() > bytes_max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {bytes_max} are accepted", value.len()),
        ));
    }
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
        assert_eq!(json_depth(r#"{"a":{"b":[1,{"c":2}]}}"#), 4);
        assert_eq!(json_depth(r#"{"a":"[[[[{{{{\"]]]]"}"#), 1);
        let mut event = good();
        event.metadata_json = format!(r#"{{"deep":"{}"}}"#, "[".repeat(50));
        assert!(validate_event(&mut event.clone(), NOW_NS, || "gen".into()).is_ok());
    }

    #[test]
    fn skew_inside_five_minutes_is_accepted() {
        let mut event = good();
        event.occurred_at.as_mut().unwrap().seconds = NOW_NS / 1_000_000_000 + 299;
        assert!(validate_event(&mut event.clone(), NOW_NS, || "gen".into()).is_ok());
    }
}
