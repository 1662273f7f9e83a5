//! What apply checks of a committed entry before it changes anything: the events of an
//! `Append` hold what their stored form relies on (valid tenant ids, ids and fields
//! within their bounds: [`check_record`]), tenant ids of seals and checkpoints are
//! valid, and checkpoint notes carry the checkpoint key's signature. The leader checked all of this before
//! proposing; a replica checks again because an entry can reach it from elsewhere (a
//! crafted `AppendEntries` on the peer port, a bug in another node).
//!
//! Deterministic: the decision depends on the entry's bytes and the checkpoint key only
//! (every node of a cluster shares that key), never on a clock. So ingest's bound on
//! `occurred_at` in the future (against the node's clock) is not checked again: a
//! bound against the entry's own time would refuse a legitimate batch after a clock
//! step, and a forged time breaks no chain. Every replica refuses the same entries, and
//! a refused entry applies nothing anywhere.

use super::apply::{CheckpointNote, LedgerCommand};
use super::checkpoint::NoteVerifier;
use super::event::EventRecord;
// The cluster map's tenant: its metadata is the map (larger than a producer's 8 KiB).
use super::routing::{is_reserved_tenant, CLUSTER_TENANT};
use super::validate::{
    validate_tenant_id, FieldError, ACTION_BYTES_MAX, EMAIL_BYTES_MAX, EVENT_ID_BYTES_MAX,
    ID_BYTES_MAX, METADATA_BYTES_MAX, OCCURRED_AT_NS_MIN, RESOURCE_TYPE_BYTES_MAX,
    USER_AGENT_BYTES_MAX,
};

/// An IPv6 address with a zone is at most ~60 bytes; ingest accepts only what parses
/// as an address, so this bound is far from every stored value.
const IP_ADDRESS_BYTES_MAX: usize = 128;

/// Why an entry is refused; the text names the item and the field.
pub fn check_command(
    command: &LedgerCommand,
    notes_key: Option<&NoteVerifier>,
) -> Result<(), String> {
    match command {
        LedgerCommand::Append { events, .. } => {
            for (index, event) in events.iter().enumerate() {
                check_record(event).map_err(|error| format!("event {index}: {error}"))?;
            }
            Ok(())
        }
        LedgerCommand::Seal { tenant_id, .. } => match tenant_id {
            Some(tenant_id) => check_tenant(tenant_id).map_err(|error| format!("seal: {error}")),
            None => Ok(()),
        },
        LedgerCommand::Checkpoint { notes } => {
            for (index, CheckpointNote { tenant_id, note }) in notes.iter().enumerate() {
                check_tenant(tenant_id).map_err(|error| format!("note {index}: {error}"))?;
                if let Some(key) = notes_key {
                    key.verify(note)
                        .map_err(|error| format!("note {index}: {error}"))?;
                }
            }
            Ok(())
        }
    }
}

fn check_tenant(tenant_id: &str) -> Result<(), FieldError> {
    if is_reserved_tenant(tenant_id) {
        return Ok(());
    }
    validate_tenant_id(tenant_id).map(|_| ())
}

/// Checks what the stored form of an event relies on, and nothing that ingest's policy
/// may tighten later: the tenant id (a key prefix and a path segment), a non-empty
/// event id within its bound (a storage key), every field within its byte bound, and
/// metadata within its size. Ingest's other rules (JSON that round-trips, no invisible
/// characters, the action's spelling) are not run again here: an entry a leader
/// accepted under an earlier version's rules may still be in the log when a replica of
/// a later version applies it, and a rule added since would refuse it on that replica
/// only, forking it from the others. These bounds never change. Cost: a length check per
/// field, no copy and no parse on the apply path.
fn check_record(record: &EventRecord) -> Result<(), FieldError> {
    if !is_reserved_tenant(&record.tenant_id) {
        validate_tenant_id(&record.tenant_id)?;
    }
    let reserved = record.tenant_id == CLUSTER_TENANT;
    if record.event_id.is_empty() {
        return Err(FieldError::new("event_id", "is required"));
    }
    let metadata_bytes_max = if reserved {
        // The cluster map: bounded by the entry, not by a producer's 8 KiB.
        usize::MAX
    } else {
        METADATA_BYTES_MAX
    };
    let bounds: [(&'static str, &str, usize); 13] = [
        ("event_id", &record.event_id, EVENT_ID_BYTES_MAX),
        ("actor.id", &record.actor_id, ID_BYTES_MAX),
        ("actor.email", &record.actor_email, EMAIL_BYTES_MAX),
        ("actor.name", &record.actor_name, ID_BYTES_MAX),
        ("action", &record.action, ACTION_BYTES_MAX),
        (
            "resource.type",
            &record.resource_type,
            RESOURCE_TYPE_BYTES_MAX,
        ),
        ("resource.id", &record.resource_id, ID_BYTES_MAX),
        ("request_id", &record.request_id, ID_BYTES_MAX),
        ("session_id", &record.session_id, ID_BYTES_MAX),
        ("ip_address", &record.ip_address, IP_ADDRESS_BYTES_MAX),
        ("user_agent", &record.user_agent, USER_AGENT_BYTES_MAX),
        ("metadata_json", &record.metadata_json, metadata_bytes_max),
        ("subject_id", &record.subject_id, ID_BYTES_MAX),
    ];
    for (field, value, bytes_max) in bounds {
        if value.len() > bytes_max {
            return Err(FieldError::new(
                field,
                format!("is {} bytes; at most {bytes_max} are accepted", value.len()),
            ));
        }
    }
    if record.occurred_at_ns < OCCURRED_AT_NS_MIN {
        return Err(FieldError::new(
            "occurred_at",
            "is before 2000-01-01T00:00:00Z",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::sample_event;
    use crate::ledger::NoteSigner;

    const INGESTED_AT_NS: i64 = 1_735_689_603_000_000_000;

    fn append(events: Vec<EventRecord>) -> LedgerCommand {
        LedgerCommand::Append {
            ingested_at_ns: INGESTED_AT_NS,
            block_events_max: 3,
            events,
        }
    }

    #[test]
    fn events_ingest_accepts_pass_and_others_are_named() {
        check_command(&append(vec![sample_event("ten_a", "e1")]), None).expect("valid");
        let mut bad = sample_event("ten_a", "e2");
        bad.tenant_id = "../../etc".into();
        let error = check_command(&append(vec![sample_event("ten_a", "e1"), bad]), None)
            .expect_err("tenant id");
        assert!(error.starts_with("event 1: tenant_id:"), "{error}");
        let mut bad = sample_event("ten_a", "e2");
        bad.action = "a".repeat(ACTION_BYTES_MAX + 1);
        let error = check_command(&append(vec![bad]), None).expect_err("action");
        assert!(error.starts_with("event 0: action:"), "{error}");
        let mut bad = sample_event("ten_a", "e2");
        bad.event_id = "e".repeat(EVENT_ID_BYTES_MAX + 1);
        let error = check_command(&append(vec![bad]), None).expect_err("event id");
        assert!(error.starts_with("event 0: event_id:"), "{error}");
        // What a later ingest policy refuses is still applied: an entry of an earlier
        // version's leader must apply alike on every replica.
        let mut earlier_rules = sample_event("ten_a", "e3");
        earlier_rules.metadata_json = r#"{"a":1,"a":2}"#.into();
        earlier_rules.actor_name = "Ada\u{202e}".into();
        check_command(&append(vec![earlier_rules]), None).expect("stable rules only");
        let mut bad = sample_event("ten_a", "e2");
        bad.occurred_at_ns = 1_000;
        let error = check_command(&append(vec![bad]), None).expect_err("before 2000");
        assert!(error.starts_with("event 0: occurred_at:"), "{error}");
        let mut ahead = sample_event("ten_a", "e2");
        ahead.occurred_at_ns = INGESTED_AT_NS + 3_600_000_000_000;
        check_command(&append(vec![ahead]), None).expect("no clock at apply");
        let mut bad = sample_event("ten_a", "e2");
        bad.event_id.clear();
        assert!(check_command(&append(vec![bad]), None).is_err());
    }

    /// The checkpoint publisher's last guard (`storage/publish.rs`): whatever a tenant
    /// id holds, its stream directory is one plain name under the checkpoint directory.
    #[test]
    fn a_tenant_id_never_names_a_path_outside_the_checkpoint_directory() {
        use crate::storage::publish::Publisher;
        use std::path::{Component, Path};
        assert_eq!(
            Publisher::stream_dir("ten_0001", 0),
            Path::new("ten_0001/0")
        );
        assert_eq!(
            Publisher::stream_dir("_cluster", 0),
            Path::new("_cluster/0")
        );
        let long = "x/".repeat(300);
        for tenant_id in [
            "../escape",
            "..",
            ".",
            "a/b",
            "/abs",
            "",
            ".hidden",
            "a\0b",
            &long,
        ] {
            let dir = Publisher::stream_dir(tenant_id, 0);
            let components: Vec<Component> = dir.components().collect();
            assert_eq!(components.len(), 2, "{tenant_id:?} -> {dir:?}");
            let Component::Normal(name) = components[0] else {
                panic!("{tenant_id:?} -> {dir:?}");
            };
            let name = name.to_str().expect("ASCII");
            assert!(name.starts_with('%') && name.len() <= 200, "{name}");
            assert!(!name.contains('/') && !name.contains('\0'), "{name}");
        }
        assert_ne!(
            Publisher::stream_dir("a/b", 0),
            Publisher::stream_dir("a.b", 0)
        );
    }

    #[test]
    fn the_cluster_map_event_passes() {
        let mut map = sample_event(CLUSTER_TENANT, "cluster-map-1");
        map.metadata_json = format!(r#"{{"nodes":"{}"}}"#, "x".repeat(20_000));
        check_command(&append(vec![map.clone()]), None).expect("the reserved tenant");
        let mut producer = map;
        producer.tenant_id = "ten_a".into();
        assert!(
            check_command(&append(vec![producer]), None).is_err(),
            "8 KiB for others"
        );
    }

    #[test]
    fn checkpoint_notes_need_the_keys_signature_and_a_valid_tenant() {
        use ed25519_dalek::SigningKey;
        let signer = NoteSigner::new("trail.local", SigningKey::from_bytes(&[3; 32])).unwrap();
        let forger = NoteSigner::new("trail.local", SigningKey::from_bytes(&[4; 32])).unwrap();
        let body = crate::ledger::CheckpointBody {
            origin: "trail.local/ten_a/0".into(),
            tree_size: 1,
            root: [1; 32],
            last_seq: 1,
            time_ns: INGESTED_AT_NS,
        };
        let key = signer.verifier();
        let notes = |signer: &NoteSigner, tenant_id: &str| LedgerCommand::Checkpoint {
            notes: vec![CheckpointNote {
                tenant_id: tenant_id.into(),
                note: signer.sign(&body),
            }],
        };
        check_command(&notes(&signer, "ten_a"), Some(&key)).expect("signed");
        let error = check_command(&notes(&forger, "ten_a"), Some(&key)).expect_err("forged");
        assert!(error.contains("signature"), "{error}");
        let error = check_command(&notes(&signer, "../x"), Some(&key)).expect_err("tenant");
        assert!(error.contains("tenant_id"), "{error}");
    }
}
