//! API keys through the real binaries: a node's admin token makes a tenant's read key,
//! which reads its own tenant, is refused another's, and stops working once revoked.
//!
//! Steps:
//! 1. start `traild` on free loopback ports; it writes `<data dir>/admin.token`;
//! 2. with `--token-file <data dir>/admin.token`: ingest an event of acme, then
//!    `api-key create --tenant acme --role read`, which prints the key's id and its
//!    token once;
//! 3. with the read token in `TRAIL_TOKEN`: `query --tenant acme` finds the event;
//!    `query --tenant globex` exits 1 with PERMISSION_DENIED naming the role and the
//!    tenant, and the hint names TRAIL_TOKEN and never the token;
//! 4. `api-key revoke ID` with the admin token; `api-key list --all --json` shows it
//!    revoked;
//! 5. the read token is refused: UNAUTHENTICATED, "revoked", exit code 1.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use trail_tests::{binary, NodeSpec, Traild};

const TENANT: &str = "acme";
const OTHER_TENANT: &str = "globex";

/// `trailctl --endpoint <node> ARGS` in `cwd` (which holds no ./trail-data), with no
/// token from the environment unless `token` is given as TRAIL_TOKEN.
fn trailctl(
    node: &Traild,
    cwd: &Path,
    token: Option<&str>,
    args: &[&str],
) -> (i32, String, String) {
    let mut command = Command::new(binary("trailctl"));
    command
        .current_dir(cwd)
        .env_remove("TRAIL_TOKEN")
        .env_remove("TRAIL_TOKEN_FILE")
        .arg("--endpoint")
        .arg(node.endpoint())
        .args(args);
    if let Some(token) = token {
        command.env("TRAIL_TOKEN", token);
    }
    let output = command.output().expect("run trailctl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Waits until the node serves its admin key: the token file exists and `status`
/// with it succeeds.
fn wait_admin_ready(node: &Traild, cwd: &Path, token_file: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Path::new(token_file).exists() {
            let (code, _, _) = trailctl(node, cwd, None, &["--token-file", token_file, "status"]);
            if code == 0 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "traild at {} did not serve its admin key within 60 s",
            node.endpoint()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_key_reads_its_tenant_only_until_revoked() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cwd = dir.path();
    let data_dir = cwd.join("data");
    let mut node = Traild::logged(&data_dir, &NodeSpec::loopback(), &[]);
    node.launch();
    let admin_file = data_dir.join("admin.token");
    let admin_file = admin_file.to_str().expect("UTF-8 path");
    wait_admin_ready(&node, cwd, admin_file);

    // An event of acme, recorded with the admin key.
    let events = cwd.join("events.jsonl");
    std::fs::write(
        &events,
        format!(
            r#"{{"event_id":"evt-1","tenant_id":"{TENANT}","actor":{{"type":"USER","id":"usr_1"}},"action":"auth.login","resource":{{"type":"session","id":"ses_1"}},"result":"SUCCESS","occurred_at":"2025-01-01T00:00:00Z"}}"#
        ) + "\n",
    )
    .unwrap();
    let (code, stdout, stderr) = trailctl(
        &node,
        cwd,
        None,
        &[
            "--token-file",
            admin_file,
            "ingest",
            events.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "ingest: {stdout}{stderr}");

    // A read key of acme: its id on the first line, its token (shown once) last.
    let (code, stdout, stderr) = trailctl(
        &node,
        cwd,
        None,
        &[
            "--token-file",
            admin_file,
            "api-key",
            "create",
            "--tenant",
            TENANT,
            "--role",
            "read",
            "--name",
            "acme-portal",
        ],
    );
    assert_eq!(code, 0, "api-key create: {stdout}{stderr}");
    assert!(stdout.contains("shown only once"), "{stdout}");
    assert!(stdout.contains("tenant acme"), "{stdout}");
    let key_id = stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("created API key "))
        .unwrap_or_else(|| panic!("no key id in: {stdout}"))
        .to_string();
    let token = stdout.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with(&format!("trail_{key_id}_")), "{stdout}");

    // Its own tenant: the event.
    let (code, stdout, stderr) = trailctl(
        &node,
        cwd,
        Some(&token),
        &["query", "--tenant", TENANT, "--json"],
    );
    assert_eq!(code, 0, "query acme: {stdout}{stderr}");
    assert!(stdout.contains("evt-1"), "{stdout}");

    // Another tenant: refused, naming the role and the tenant; the hint says where
    // the token came from and never shows it.
    let (code, stdout, stderr) = trailctl(
        &node,
        cwd,
        Some(&token),
        &["query", "--tenant", OTHER_TENANT],
    );
    assert_eq!(code, 1, "query globex: {stdout}{stderr}");
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(stderr.contains("role read"), "{stderr}");
    assert!(stderr.contains(OTHER_TENANT), "{stderr}");
    assert!(stderr.contains("TRAIL_TOKEN"), "{stderr}");
    assert!(!stderr.contains(&token), "the token leaked: {stderr}");

    // Revoked with the admin key.
    let (code, stdout, stderr) = trailctl(
        &node,
        cwd,
        None,
        &["--token-file", admin_file, "api-key", "revoke", &key_id],
    );
    assert_eq!(code, 0, "api-key revoke: {stdout}{stderr}");
    let (code, stdout, stderr) = trailctl(
        &node,
        cwd,
        None,
        &[
            "--token-file",
            admin_file,
            "api-key",
            "list",
            "--all",
            "--json",
        ],
    );
    assert_eq!(code, 0, "api-key list: {stdout}{stderr}");
    let listed: serde_json::Value = stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .find(|key| key["key_id"] == key_id.as_str())
        .unwrap_or_else(|| panic!("{key_id} not listed: {stdout}"));
    assert!(listed["revoked_at"].is_string(), "{listed}");
    assert!(
        !stdout.contains(&token),
        "api-key list shows a token: {stdout}"
    );

    // The revoked key is refused.
    let (code, stdout, stderr) = trailctl(&node, cwd, Some(&token), &["query", "--tenant", TENANT]);
    assert_eq!(code, 1, "query after revoke: {stdout}{stderr}");
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(stderr.contains("revoked"), "{stderr}");
    assert!(!stderr.contains(&token), "the token leaked: {stderr}");
}
