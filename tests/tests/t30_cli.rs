//! The quick start through the real binaries: `trailctl ingest` of a JSON-lines file
//! with good and bad lines, again (all deduplicated), `status`, `get`, `tail`, then a
//! graceful stop (SIGTERM, exit 0) and a restart with everything still there.
//!
//! Steps:
//! 1. start `traild`; write a file of 300 workload-shaped lines with bad lines between;
//! 2. `trailctl ingest --json`: 300 accepted, every bad line rejected and reported as
//!    `line N: ...` naming the field; exit code 1 (something was rejected);
//! 3. ingest the same file again: 300 deduplicated, 0 accepted;
//! 4. `status --json` counts 300 events; `get` and `tail` return them;
//! 5. SIGTERM: the node exits 0; restart: still 300 events.

use std::io::Write;

use trail_tests::Traild;

const GOOD_LINES: usize = 300;

fn good_line(index: usize) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let when = chrono_like(now - 3_600 + index as u64);
    format!(
        r#"{{"event_id":"evt-{index}","tenant_id":"ten_{tenant:02}","actor":{{"type":"USER","id":"usr_{actor}","email":"u{actor}@example.com"}},"action":"auth.login","resource":{{"type":"session","id":"ses_{index}"}},"result":"SUCCESS","ip_address":"203.0.113.7","user_agent":"curl/8","request_id":"req_{index}","occurred_at":"{when}","metadata":{{"mfa":true}}}}"#,
        tenant = index % 7,
        actor = index % 13,
    )
}

/// RFC 3339 UTC from Unix seconds, without a date library (civil-from-days).
fn chrono_like(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let seconds_of_day = unix_seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds_of_day / 3_600,
        seconds_of_day % 3_600 / 60,
        seconds_of_day % 60
    )
}

fn trailctl(node: &Traild, args: &[&str]) -> (i32, String, String) {
    let output = trail_tests::trailctl()
        .arg("--endpoint")
        .arg(node.endpoint())
        .args(args)
        .output()
        .expect("run trailctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("not a JSON summary ({error}): {stdout}"))
}

/// The events of the data shards in `trailctl status --json`: not those of shard 0,
/// the node's own streams (its API keys), which `events` counts too.
fn tenant_events(status: &serde_json::Value) -> u64 {
    let shards = status["shards"].as_array().expect("a shards array");
    shards
        .iter()
        .filter(|shard| shard["shard_id"].as_u64() != Some(0))
        .map(|shard| shard["events"].as_u64().expect("a shard's events"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_twice_status_get_tail_and_graceful_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut node = Traild::start(&dir.path().join("data"), &[]).await;

    let file_path = dir.path().join("events.jsonl");
    let mut file = std::fs::File::create(&file_path).unwrap();
    // (line number, what the error must name)
    let mut bad_lines: Vec<(usize, &str)> = Vec::new();
    let mut line_number = 0;
    for index in 0..GOOD_LINES {
        line_number += 1;
        writeln!(file, "{}", good_line(index)).unwrap();
        let bad: Option<(String, &str)> = match index {
            10 => Some((r#"{"tenant_id": "ten_01", "action": "#.to_string(), "JSON")),
            20 => Some((
                good_line(9_000).replace(r#""tenant_id":"ten_"#, r#""tenant":"ten_"#),
                "tenant",
            )),
            30 => Some((
                good_line(9_001).replace(r#""result":"SUCCESS""#, r#""result":5"#),
                "result",
            )),
            40 => Some((
                good_line(9_002).replace(r#""result":"SUCCESS""#, r#""result":"OK""#),
                "result",
            )),
            50 => Some((
                good_line(9_003).replace("auth.login", "Auth Login"),
                "action",
            )),
            60 => Some((
                good_line(9_004).replace(r#""occurred_at":"20"#, r#""occurred_at":"29"#),
                "occurred_at",
            )),
            70 => Some((
                good_line(9_005)
                    .replace(r#""tenant_id":"ten_"#, r#""tenant_id":"no spaces allowed "#),
                "tenant_id",
            )),
            _ => None,
        };
        if let Some((line, field)) = bad {
            line_number += 1;
            writeln!(file, "{line}").unwrap();
            bad_lines.push((line_number, field));
        }
    }
    drop(file);
    let path = file_path.to_str().unwrap();

    let (code, stdout, stderr) = trailctl(&node, &["ingest", path, "--json", "--quiet"]);
    let first = summary(&stdout);
    assert_eq!(first["accepted"], GOOD_LINES, "{stdout}\n{stderr}");
    assert_eq!(first["rejected"], bad_lines.len(), "{stdout}\n{stderr}");
    assert_eq!(code, 1, "rejections make the exit code 1");
    for (line, field) in &bad_lines {
        let report = stderr
            .lines()
            .find(|report| report.starts_with(&format!("line {line}:")))
            .unwrap_or_else(|| panic!("line {line} not reported:\n{stderr}"));
        assert!(
            report.contains(field),
            "line {line} report does not name {field}: {report}"
        );
    }

    let (_, stdout, _) = trailctl(&node, &["ingest", path, "--json", "--quiet"]);
    let second = summary(&stdout);
    assert_eq!(second["accepted"], 0);
    assert_eq!(second["deduplicated"], GOOD_LINES);

    let (code, stdout, _) = trailctl(&node, &["status", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(tenant_events(&summary(&stdout)), GOOD_LINES as u64);

    let (code, stdout, _) = trailctl(&node, &["get", "--tenant", "ten_03", "evt-3"]);
    assert_eq!(code, 0);
    let event: serde_json::Value = serde_json::from_str(&stdout).expect("get prints JSON");
    assert_eq!(event["event_id"], "evt-3");
    assert_eq!(event["seq"], 1);

    let (code, _, stderr) = trailctl(&node, &["get", "--tenant", "ten_04", "evt-3"]);
    assert_eq!(code, 1, "another tenant's event is not found: {stderr}");

    let (code, stdout, _) = trailctl(&node, &["tail", "--tenant", "ten_00", "--limit", "1000"]);
    assert_eq!(code, 0);
    let seqs: Vec<u64> = stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected);
    assert_eq!(seqs.len(), GOOD_LINES.div_ceil(7));

    assert_eq!(node.terminate(), Some(0), "SIGTERM stops the node cleanly");
    node.restart().await;
    let (_, stdout, _) = trailctl(&node, &["status", "--json"]);
    assert_eq!(tenant_events(&summary(&stdout)), GOOD_LINES as u64);
}

/// `trailctl bench ingest` against a real node: its JSON report counts every event, and
/// `--latency-log` writes one CSV line per call, in send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_ingest_reports_and_logs_every_call() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(&dir.path().join("data"), &[]).await;
    let log = dir.path().join("latency.csv");
    let (code, stdout, stderr) = trailctl(
        &node,
        &[
            "bench",
            "ingest",
            "--count",
            "2000",
            "--concurrency",
            "4",
            "--batch-size",
            "50",
            "--fsync-dir",
            dir.path().to_str().unwrap(),
            "--latency-log",
            log.to_str().unwrap(),
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(code, 0, "bench ingest failed: {stderr}");
    let report = summary(&stdout);
    assert_eq!(report["accepted"], 2000, "{report}");
    let text = std::fs::read_to_string(&log).expect("the latency log");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sent_unix_ms,sent_ms,latency_ms,events"));
    let rows: Vec<Vec<f64>> = lines
        .map(|line| {
            line.split(',')
                .map(|field| field.parse::<f64>().expect("a number"))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 40, "one line per call of 50 events");
    assert!(rows.iter().all(|row| row.len() == 4 && row[2] > 0.0));
    assert_eq!(rows.iter().map(|row| row[3]).sum::<f64>(), 2000.0);
    assert!(
        rows.windows(2).all(|pair| pair[0][1] <= pair[1][1]),
        "send order"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as f64;
    assert!(
        rows.iter()
            .all(|row| row[0] <= now_ms && row[0] > now_ms - 600_000.0),
        "send times are Unix milliseconds of this run"
    );
}
