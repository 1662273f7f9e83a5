//! Exports through a real node: `trailctl export` writes records and a proof bundle that
//! `trailctl verify-export` checks offline, and every change to them is caught and named.
//!
//! Steps: start a node with small blocks (64 events, sealed every 100 ms) and two
//! shards; pin its verifier key; record generated workload events (client/src/workload.rs)
//! for three tenants in four rounds, noting the time between rounds 1 and 2 and between 3
//! and 4; check that the node's canonical bytes re-encode to themselves with the
//! client's encoder; export tenant ten_a's time range covering rounds 2 and 3 (JSON
//! lines and CSV) and check it holds exactly that tenant's events of those rounds, with
//! the node's leaf hashes, and verifies; then check that deleting the last line,
//! deleting a middle line, editing a field, editing one byte, swapping two lines, and
//! using tenant ten_b's export or bundle instead all fail verification, each with a
//! message naming the line, the seq or the tenant; export an empty range (both
//! neighbours proven) and the whole stream; finally a filtered export (`--actor-type
//! user --action 'auth.*'`) verifies, holds as many events as `trailctl count` finds,
//! and fails when a line is removed.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_stream::StreamExt;
use trail_client::event::CanonicalEvent;
use trail_client::workload::Workload;
use trail_client::Client;
use trail_proto::v1::{QueryFilter, QueryRequest};
use trail_tests::Traild;

const NODE_ARGS: &[&str] = &[
    "--shards",
    "2",
    "--block-events",
    "64",
    "--seal-interval-ms",
    "100",
];
const TENANTS: [&str; 3] = ["ten_a", "ten_b", "ten_c"];
/// Events per round, over the three tenants.
const ROUND_EVENTS: usize = 600;

#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn trailctl(node: &Traild, args: &[&str]) -> Output {
    let mut command = trail_tests::trailctl();
    command.arg("--endpoint").arg(node.endpoint());
    // The key comes from --key only.
    command.env_remove("TRAIL_VERIFIER_KEY");
    let output = command.args(args).output().expect("run trailctl");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn expect_ok(output: &Output, what: &str) {
    assert_eq!(
        output.code, 0,
        "{what}: expected exit 0\nstdout: {}\nstderr: {}",
        output.stdout, output.stderr
    );
    eprintln!("[{what}] ok:\n{}", output.stdout.trim_end());
}

/// Exit 1 with a message holding every one of `words`.
fn expect_failure(output: &Output, what: &str, words: &[&str]) {
    assert_eq!(
        output.code, 1,
        "{what}: expected exit 1\nstdout: {}\nstderr: {}",
        output.stdout, output.stderr
    );
    let message = output.stderr.trim();
    for word in words {
        assert!(
            message.contains(word),
            "{what}: the message does not say {word:?}:\n{message}"
        );
    }
    eprintln!("[{what}] exit 1: {message}");
}

fn rfc3339(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970");
    trail_client::checkpoint::format_time(since.as_nanos() as i64)
}

fn bundle_of(records: &Path) -> PathBuf {
    PathBuf::from(format!("{}.proof.jsonl", records.display()))
}

fn export(node: &Traild, key: &str, tenant: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "export",
        "--quiet",
        "--tenant",
        tenant,
        "--key",
        key,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    trailctl(node, &args)
}

fn verify(node: &Traild, key: &str, records: &Path, bundle: Option<&Path>) -> Output {
    let mut args = vec![
        "verify-export",
        "--quiet",
        records.to_str().unwrap(),
        "--key",
        key,
    ];
    if let Some(bundle) = bundle {
        args.extend_from_slice(&["--bundle", bundle.to_str().unwrap()]);
    }
    trailctl(node, &args)
}

/// A copy of `records` with `edit` applied to its lines, verified against the original
/// bundle.
fn verify_edited(
    node: &Traild,
    key: &str,
    records: &Path,
    name: &str,
    edit: impl Fn(&mut Vec<String>),
) -> Output {
    let text = std::fs::read_to_string(records).expect("read the export");
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    edit(&mut lines);
    let edited = records.with_file_name(name);
    std::fs::write(&edited, lines.concat()).expect("write the edited copy");
    verify(node, key, &edited, Some(&bundle_of(records)))
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("read the export")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

/// Records one round of workload events spread over the tenants; returns the event ids
/// per tenant.
async fn record_round(client: &Client, workload: &mut Workload) -> Vec<Vec<String>> {
    let mut per_tenant = vec![Vec::new(); TENANTS.len()];
    let mut events = Vec::with_capacity(ROUND_EVENTS);
    for index in 0..ROUND_EVENTS {
        let mut event = workload.next_event();
        event.tenant_id = TENANTS[index % TENANTS.len()].to_string();
        per_tenant[index % TENANTS.len()].push(event.event_id.clone());
        events.push(event);
    }
    let response = client.record_batch(events).await.expect("record_batch");
    assert_eq!(response.accepted as usize, ROUND_EVENTS, "{response:?}");
    per_tenant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_verify_offline_and_every_tampering_is_named() {
    let data = tempfile::tempdir().expect("temp dir");
    let node = Traild::start(&data.path().join("node"), NODE_ARGS).await;
    let out = tempfile::tempdir().expect("temp dir");
    let key = node.status().await.verifier_key;
    assert!(key.starts_with("trail.local+"), "{key}");
    let client = node.sdk().await.expect("connect");

    // Four rounds; the range covers rounds 2 and 3 of ten_a.
    let mut workload = Workload::new(95, 4 * ROUND_EVENTS as u64);
    record_round(&client, &mut workload).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = SystemTime::now();
    let empty_end = start + Duration::from_millis(50);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = record_round(&client, &mut workload).await;
    let third = record_round(&client, &mut workload).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    record_round(&client, &mut workload).await;
    let expected_ids: Vec<String> = second[0].iter().chain(&third[0]).cloned().collect();

    // The client's encoder gives back the node's canonical bytes, for every event.
    let mut blocks = client
        .list_blocks("ten_a", 0, 0, 0, true)
        .await
        .expect("list blocks");
    let mut events_seen = 0;
    while let Some(block) = blocks.next().await {
        for bytes in block.expect("a block").events {
            let event = CanonicalEvent::decode(&bytes).expect("the node's bytes decode");
            assert_eq!(event.encode(), bytes, "seq {}", event.seq);
            events_seen += 1;
        }
    }
    assert!(events_seen > 0);

    // The range of rounds 2 and 3, as JSON lines.
    let (start_text, end_text) = (rfc3339(start), rfc3339(end));
    let range = ["--start-time", &start_text, "--end-time", &end_text];
    let records_a = out.path().join("a.jsonl");
    let exported = export(&node, &key, "ten_a", &records_a, &range);
    expect_ok(&exported, "export ten_a range");
    assert!(exported.stdout.contains("complete"), "{}", exported.stdout);
    // The export is recorded in the tenant's own log before it reads, with what it
    // selects, and its summary names the record.
    assert!(
        exported.stdout.contains("recorded  as audit_log.export"),
        "{}",
        exported.stdout
    );
    let records = client
        .query(QueryRequest {
            tenant_id: "ten_a".into(),
            filter: Some(QueryFilter {
                action: "audit_log.export".into(),
                ..QueryFilter::default()
            }),
            ..QueryRequest::default()
        })
        .await
        .expect("query the export records");
    assert_eq!(records.events.len(), 1, "one audit_log.export record");
    let record = records.events[0].event.as_ref().expect("event");
    let metadata: serde_json::Value =
        serde_json::from_str(&record.metadata_json).expect("metadata is JSON");
    assert_eq!(metadata["read"], "export");
    assert_eq!(metadata["time_field"], "ingested_at");
    assert_eq!(metadata["format"], "jsonl");
    assert!(metadata["filter"]["start_time_ns"].is_i64(), "{metadata}");
    let lines = json_lines(&records_a);
    let ids: Vec<String> = lines
        .iter()
        .map(|line| line["event_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids, expected_ids,
        "the range holds exactly rounds 2 and 3 of ten_a"
    );
    let first_seq = lines[0]["seq"].as_u64().unwrap();
    let page = client
        .tail("ten_a", first_seq - 1, 1000)
        .await
        .expect("tail");
    for (line, stored) in lines.iter().zip(&page.events) {
        assert_eq!(line["seq"].as_u64().unwrap(), stored.seq);
        assert_eq!(
            line["leaf_hash"].as_str().unwrap(),
            trail_client::json::hex(&stored.leaf_hash),
            "seq {}",
            stored.seq
        );
    }
    expect_ok(
        &verify(&node, &key, &records_a, None),
        "verify-export ten_a",
    );

    // Tampering with the records.
    let middle = lines.len() / 2;
    let middle_seq = (first_seq + middle as u64).to_string();
    let last_seq = (first_seq + lines.len() as u64 - 1).to_string();
    expect_failure(
        &verify_edited(&node, &key, &records_a, "last-deleted.jsonl", |lines| {
            lines.pop();
        }),
        "last line deleted",
        &["lines were removed", &format!("seq {last_seq}")],
    );
    expect_failure(
        &verify_edited(&node, &key, &records_a, "middle-deleted.jsonl", |lines| {
            lines.remove(middle);
        }),
        "middle line deleted",
        &[
            &format!("export line {}", middle + 1),
            &format!("seq {middle_seq} is missing"),
        ],
    );
    expect_failure(
        &verify_edited(&node, &key, &records_a, "field-edited.jsonl", |lines| {
            let action = serde_json::from_str::<serde_json::Value>(&lines[middle]).unwrap()
                ["action"]
                .as_str()
                .unwrap()
                .to_string();
            lines[middle] = lines[middle].replace(
                &format!("\"action\":\"{action}\""),
                "\"action\":\"record.delete.all\"",
            );
        }),
        "field edited",
        &[
            &format!("export line {} (seq {middle_seq})", middle + 1),
            "leaf_hash",
        ],
    );
    expect_failure(
        &verify_edited(&node, &key, &records_a, "byte-edited.jsonl", |lines| {
            // One byte of the occurred_at digits: still a valid time, another value.
            let line = &mut lines[0];
            let at = line.find("\"occurred_at\":\"").unwrap() + "\"occurred_at\":\"".len() + 18;
            let digit = line.as_bytes()[at];
            let other = if digit == b'5' { "6" } else { "5" };
            line.replace_range(at..at + 1, other);
        }),
        "byte edited",
        &["export line 1", "leaf_hash"],
    );
    expect_failure(
        &verify_edited(&node, &key, &records_a, "swapped.jsonl", |lines| {
            lines.swap(middle, middle + 1);
        }),
        "lines swapped",
        &[&format!("export line {}", middle + 1), "reordered"],
    );

    // Another tenant's export and bundle.
    let records_b = out.path().join("b.jsonl");
    expect_ok(
        &export(&node, &key, "ten_b", &records_b, &range),
        "export ten_b range",
    );
    expect_ok(
        &verify(&node, &key, &records_b, None),
        "verify-export ten_b",
    );
    expect_failure(
        &verify(&node, &key, &records_a, Some(&bundle_of(&records_b))),
        "ten_a's export with ten_b's bundle",
        &["belongs to tenant ten_a", "tenant ten_b"],
    );
    expect_failure(
        &verify(&node, &key, &records_b, Some(&bundle_of(&records_a))),
        "ten_b's export with ten_a's bundle",
        &["belongs to tenant ten_b", "tenant ten_a"],
    );

    // The same range as CSV: verifies, and an edited cell fails.
    let csv_a = out.path().join("a.csv");
    expect_ok(
        &export(
            &node,
            &key,
            "ten_a",
            &csv_a,
            &[&range[..], &["--format", "csv"]].concat(),
        ),
        "export ten_a range as CSV",
    );
    expect_ok(&verify(&node, &key, &csv_a, None), "verify-export CSV");
    expect_failure(
        &verify_edited(&node, &key, &csv_a, "edited.csv", |lines| {
            lines[2] =
                lines[2]
                    .replacen(",USER,", ",SYSTEM,", 1)
                    .replacen(",SERVICE,", ",SYSTEM,", 1);
        }),
        "CSV cell edited",
        &["export line 3", "leaf_hash"],
    );

    // An empty range: both neighbours are proven, adjacent.
    let empty = out.path().join("empty.jsonl");
    let exported = export(
        &node,
        &key,
        "ten_a",
        &empty,
        &[
            "--start-time",
            &start_text,
            "--end-time",
            &rfc3339(empty_end),
        ],
    );
    expect_ok(&exported, "export an empty range");
    assert!(exported.stdout.contains(": none;"), "{}", exported.stdout);
    assert!(exported.stdout.contains("is before"), "{}", exported.stdout);
    assert!(exported.stdout.contains(" after"), "{}", exported.stdout);
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
    expect_ok(
        &verify(&node, &key, &empty, None),
        "verify-export empty range",
    );

    // The whole stream.
    let all = out.path().join("all.jsonl");
    expect_ok(
        &export(&node, &key, "ten_a", &all, &[]),
        "export the whole stream",
    );
    expect_ok(
        &verify(&node, &key, &all, None),
        "verify-export whole stream",
    );
    // The stream holds the tenant's events and the records of its reads and exports.
    let lines = json_lines(&all);
    let audit_records = lines
        .iter()
        .filter(|line| line["action"].as_str().unwrap().starts_with("audit_log."))
        .count();
    assert_eq!(
        lines.len() - audit_records,
        4 * ROUND_EVENTS / TENANTS.len()
    );
    assert!(
        audit_records >= 4,
        "{audit_records} read and export records"
    );

    // A filtered export: each event proven, as many as the node counts.
    let filtered = out.path().join("filtered.jsonl");
    let filter = ["--actor-type", "user", "--action", "auth.*"];
    let exported = export(&node, &key, "ten_a", &filtered, &filter);
    expect_ok(&exported, "export filtered");
    expect_ok(
        &verify(&node, &key, &filtered, None),
        "verify-export filtered",
    );
    let lines = json_lines(&filtered);
    assert!(lines.len() > 10, "{} events", lines.len());
    for line in &lines {
        assert_eq!(line["actor"]["type"], "USER");
        assert!(line["action"].as_str().unwrap().starts_with("auth."));
    }
    let counted = trailctl(
        &node,
        &[
            "count",
            "--tenant",
            "ten_a",
            "--actor-type",
            "user",
            "--action",
            "auth.*",
        ],
    );
    expect_ok(&counted, "count");
    assert_eq!(counted.stdout.trim(), lines.len().to_string());
    expect_failure(
        &verify_edited(&node, &key, &filtered, "filtered-deleted.jsonl", |lines| {
            lines.remove(3);
        }),
        "filtered export with a line deleted",
        &["export line 4", "is missing"],
    );
}
