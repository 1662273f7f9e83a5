//! `traild` configuration: a TOML file sets what flags would; an unknown key or a bad
//! value stops startup with a message naming it; the shard count sticks to the data
//! directory.
//!
//! Steps: write a config with 2 shards and start `traild --config`; check status shows 2
//! shards and the process runs without transparent huge pages; stop it; restart the
//! same directory with `--shards 3` and check the refusal names `shards`; try a config
//! with an unknown key and one with 0 shards.

use std::process::Command;

use trail_tests::{binary, free_port, Traild};

fn refusal(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(binary("traild"))
        .args(args)
        .env("TRAIL_LOG", "warn")
        .env(trail_tests::ADMIN_TOKEN_ENV, trail_tests::TEST_ADMIN_TOKEN)
        .output()
        .expect("run traild");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_flags_and_shard_count() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    let config = dir.path().join("trail.toml");
    std::fs::write(&config, "shards = 2\nbatch_events_max = 500\n").unwrap();
    let config_arg = config.to_str().unwrap();

    let mut node = Traild::start(&data, &["--config", config_arg]).await;
    let status = node.status().await;
    assert_eq!(trail_tests::data_shards(&status), [1, 2]);
    // The process runs without transparent huge pages (`traild.rs`), as the kernel
    // reports where it has the field (`THP_enabled`, Linux 6.x).
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", node.pid().unwrap()))
        .unwrap_or_default();
    if let Some(line) = proc_status
        .lines()
        .find(|line| line.starts_with("THP_enabled:"))
    {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    assert_eq!(node.terminate(), Some(0));

    let data_arg = data.to_str().unwrap();
    let grpc = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let (code, stderr) = refusal(&[
        "--data-dir",
        data_arg,
        "--grpc-addr",
        &grpc,
        "--http-addr",
        &http,
        "--shards",
        "3",
    ]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("shards") && stderr.contains("2"),
        "{stderr}"
    );

    std::fs::write(&config, "shards = 2\nbatch_size = 5\n").unwrap();
    let (code, stderr) = refusal(&["--config", config_arg]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("batch_size"),
        "unknown key is named: {stderr}"
    );

    let (code, stderr) = refusal(&["--data-dir", data_arg, "--shards", "0"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("shards"), "{stderr}");
}
