//! Malformed input gets a clear error naming the field; good events beside bad ones are
//! still recorded; the node keeps serving.
//!
//! Steps:
//! 1. start `traild`;
//! 2. send one batch mixing good events with every kind of bad event and check each
//!    outcome (receipt, or error naming index and field);
//! 3. send an empty batch, an oversized batch, 1 MB of metadata in a single `Record`,
//!    and bad read arguments; check the status codes and messages;
//! 4. check the good events are stored and the node still answers `Status`.

use trail_proto::v1;
use trail_tests::{event, Traild};

fn with(mut base: v1::Event, change: impl FnOnce(&mut v1::Event)) -> v1::Event {
    change(&mut base);
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_rejected_by_field_and_nothing_else_is_affected() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(dir.path(), &[]).await;
    let mut client = node.client().await.expect("connect");
    let future_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3_600;

    let cases: Vec<(v1::Event, Option<&str>)> = vec![
        (event("ten_a", "good-1"), None),
        (
            with(event("ten_a", "x1"), |e| e.tenant_id.clear()),
            Some("tenant_id"),
        ),
        (
            with(event("ten_a", "x2"), |e| {
                e.tenant_id = "../etc/passwd".into()
            }),
            Some("tenant_id"),
        ),
        (
            with(event("ten_a", "x3"), |e| e.action.clear()),
            Some("action"),
        ),
        (
            with(event("ten_a", "x4"), |e| e.actor = None),
            Some("actor"),
        ),
        (
            with(event("ten_a", "x5"), |e| {
                e.actor.as_mut().unwrap().r#type = 99
            }),
            Some("actor.type"),
        ),
        (
            with(event("ten_a", "x6"), |e| e.result = 17),
            Some("result"),
        ),
        (
            with(event("ten_a", "x7"), |e| e.occurred_at = None),
            Some("occurred_at"),
        ),
        (
            with(event("ten_a", "x8"), |e| {
                e.occurred_at.as_mut().unwrap().seconds = future_seconds
            }),
            Some("occurred_at"),
        ),
        (
            with(event("ten_a", "x9"), |e| {
                e.metadata_json = "not json".into()
            }),
            Some("metadata_json"),
        ),
        (
            with(event("ten_a", "x10"), |e| e.ip_address = "999.1.1.1".into()),
            Some("ip_address"),
        ),
        (
            with(event("ten_a", "x11"), |e| {
                e.event_id = "bad id with spaces".into()
            }),
            Some("event_id"),
        ),
        (event("ten_b", "good-2"), None),
        // Metadata that readers would read differently from the hashed bytes.
        (
            with(event("ten_a", "x12"), |e| {
                e.metadata_json = r#"{"role":"user","role":"admin"}"#.into()
            }),
            Some("metadata_json"),
        ),
        (
            with(event("ten_a", "x13"), |e| {
                e.metadata_json = r#"{"k":"\ud800"}"#.into()
            }),
            Some("metadata_json"),
        ),
        (
            with(event("ten_a", "x14"), |e| {
                e.metadata_json = r#"{"n":1e400}"#.into()
            }),
            Some("metadata_json"),
        ),
        (
            with(event("ten_a", "x15"), |e| {
                e.metadata_json = r#"{"n":18446744073709551616}"#.into()
            }),
            Some("metadata_json"),
        ),
        // Ids and names that would look like another's on screen.
        (
            with(event("ten_a", "x16"), |e| {
                e.actor.as_mut().unwrap().id = "usr_\u{202E}nimda".into()
            }),
            Some("actor.id"),
        ),
        (
            with(event("ten_a", "x17"), |e| {
                e.actor.as_mut().unwrap().name = "Ada\u{200B}".into()
            }),
            Some("actor.name"),
        ),
        (
            with(event("ten_a", "x18"), |e| {
                e.resource.as_mut().unwrap().id = "\u{FEFF}ses_1".into()
            }),
            Some("resource.id"),
        ),
        (
            with(event("ten_a", "x19"), |e| {
                e.request_id = "req_\u{2066}1".into()
            }),
            Some("request_id"),
        ),
        (
            with(event("ten_a", "x20"), |e| {
                e.action = "auth.\u{200D}login".into()
            }),
            Some("action"),
        ),
        // Metadata REST must show as recorded: key order, spacing, number spelling.
        (
            with(event("ten_r", "good-raw"), |e| {
                e.metadata_json = RAW_METADATA.into()
            }),
            None,
        ),
    ];
    let good_count = cases.iter().filter(|(_, field)| field.is_none()).count();
    let events: Vec<v1::Event> = cases.iter().map(|(event, _)| event.clone()).collect();
    let response = client
        .record_batch(v1::RecordBatchRequest { events })
        .await
        .expect("a batch with bad events is answered per event")
        .into_inner();
    assert_eq!(response.accepted as usize, good_count);
    assert_eq!(response.rejected as usize, cases.len() - good_count);
    for (index, (outcome, (_, expected_field))) in response.outcomes.iter().zip(&cases).enumerate()
    {
        match (&outcome.outcome, expected_field) {
            (Some(v1::record_outcome::Outcome::Receipt(receipt)), None) => {
                assert_eq!(receipt.seq, 1);
                assert!(!receipt.deduplicated);
            }
            (Some(v1::record_outcome::Outcome::Error(error)), Some(field)) => {
                assert_eq!(error.index as usize, index);
                assert_eq!(error.code, "INVALID_ARGUMENT");
                assert_eq!(&error.field, field, "case {index}: {}", error.message);
                let named = match error.field.as_str() {
                    "metadata_json" => [
                        "twice",
                        "lone UTF-16 surrogate",
                        "out of range",
                        "not valid JSON",
                    ]
                    .iter()
                    .any(|reason| error.message.contains(reason)),
                    // x16 to x20: the invisible characters.
                    "actor.id" | "actor.name" | "resource.id" | "request_id" | "action"
                        if ["x16", "x17", "x18", "x19", "x20"]
                            .contains(&cases[index].0.event_id.as_str()) =>
                    {
                        error.message.contains("contains U+")
                    }
                    _ => true,
                };
                assert!(named, "case {index} says what is wrong: {}", error.message);
                assert!(
                    error.message.starts_with(field),
                    "message names the field: {}",
                    error.message
                );
            }
            (other, expected) => {
                panic!("case {index}: got {other:?}, expected error on {expected:?}")
            }
        }
    }

    // Whole-request problems.
    let empty = client
        .record_batch(v1::RecordBatchRequest { events: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("events"), "{}", empty.message());

    let too_many: Vec<v1::Event> = (0..10_001)
        .map(|i| event("ten_c", &format!("many-{i}")))
        .collect();
    let over = client
        .record_batch(v1::RecordBatchRequest { events: too_many })
        .await
        .unwrap_err();
    assert_eq!(over.code(), tonic::Code::InvalidArgument);
    assert!(over.message().contains("10000"), "{}", over.message());

    let huge = with(event("ten_a", "huge"), |e| {
        e.metadata_json = format!(r#"{{"blob":"{}"}}"#, "x".repeat(1 << 20));
    });
    let huge_error = client
        .record(v1::RecordRequest { event: Some(huge) })
        .await
        .unwrap_err();
    assert_eq!(huge_error.code(), tonic::Code::InvalidArgument);
    assert!(
        huge_error.message().starts_with("metadata_json"),
        "{}",
        huge_error.message()
    );

    let no_event = client
        .record(v1::RecordRequest { event: None })
        .await
        .unwrap_err();
    assert_eq!(no_event.code(), tonic::Code::InvalidArgument);

    let bad_tail = client
        .tail(v1::TailRequest {
            tenant_id: "ten_a".into(),
            after_seq: 0,
            limit: 5_000,
            stream: String::new(),
            ..v1::TailRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_tail.code(), tonic::Code::InvalidArgument);
    assert!(
        bad_tail.message().starts_with("limit"),
        "{}",
        bad_tail.message()
    );

    let other_stream = client
        .tail(v1::TailRequest {
            tenant_id: "ten_a".into(),
            after_seq: 0,
            limit: 10,
            stream: "ten_b/0".into(),
            ..v1::TailRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(other_stream.code(), tonic::Code::InvalidArgument);

    let unknown_consistency = client
        .tail(v1::TailRequest {
            tenant_id: "ten_a".into(),
            consistency: 9,
            ..v1::TailRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_consistency.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown_consistency
            .message()
            .starts_with("consistency: unknown value 9"),
        "{}",
        unknown_consistency.message()
    );

    let missing = client
        .get_event(v1::GetEventRequest {
            tenant_id: "ten_a".into(),
            event_id: "good-2".into(),
            ..v1::GetEventRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        tonic::Code::NotFound,
        "another tenant's event is not visible"
    );

    // The good events are stored, the node still serves.
    let good = client
        .get_event(v1::GetEventRequest {
            tenant_id: "ten_b".into(),
            event_id: "good-2".into(),
            ..v1::GetEventRequest::default()
        })
        .await
        .expect("good event stored")
        .into_inner();
    assert_eq!(good.event.unwrap().seq, 1);
    assert_eq!(
        trail_tests::tenant_events(&node.status().await) as usize,
        good_count
    );

    // REST shows metadata as the bytes that were hashed, not a re-serialization.
    let rest = trail_tests::http_get(
        &node.host,
        node.http_port,
        "/api/v1/tenants/ten_r/audit-logs/good-raw",
    );
    assert_eq!(rest.status, 200, "{}", rest.body);
    assert!(
        rest.body
            .contains(&format!(r#""metadata":{RAW_METADATA},"#)),
        "{}",
        rest.body
    );
}

/// Metadata a parse and re-serialization would change: key order, spaces, a trailing
/// zero, an exponent, an escape.
const RAW_METADATA: &str = r#"{"z": 1, "a":2.50,"big":1E3,"s":"\u00e9"}"#;
