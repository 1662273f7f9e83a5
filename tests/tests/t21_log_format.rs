//! The node's log in a file is plain: no terminal colour codes when its output is not a
//! terminal, and with `--log-format json` one JSON object per line.
//!
//! Steps, once per format (the default `text`, then `--log-format json`):
//! 1. start `traild` at log level info with stdout and stderr appended to a file;
//! 2. record an event, so the log holds more than startup;
//! 3. stop it with SIGTERM and read the file;
//! 4. text: no `ESC [` anywhere; json: every line parses as a JSON object with a
//!    `level`, a `timestamp` and `fields.message`.

use trail_proto::v1;
use trail_tests::{event, NodeSpec, Traild};

/// Runs a node whose output goes to a file, with `extra_args`; returns the file's text.
async fn log_of_a_run(extra_args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temporary directory");
    let args: Vec<String> = extra_args.iter().map(|arg| arg.to_string()).collect();
    let mut node = Traild::logged(dir.path(), &NodeSpec::loopback(), &args);
    node.spawn().await;
    let mut client = node.client().await.expect("connect");
    client
        .record(v1::RecordRequest {
            event: Some(event("ten_log", "evt_1")),
        })
        .await
        .expect("record");
    assert_eq!(node.terminate(), Some(0), "traild exits cleanly on SIGTERM");
    std::fs::read_to_string(dir.path().join("traild.log")).expect("read traild.log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let log = log_of_a_run(&[]).await;
    assert!(log.lines().count() >= 2, "the node logged at info: {log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in a log file:\n{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let log = log_of_a_run(&["--log-format", "json"]).await;
    assert!(log.lines().count() >= 2, "the node logged at info: {log}");
    assert!(
        !log.contains("\x1b["),
        "colour codes in a JSON log:\n{log:?}"
    );
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
    }
}
