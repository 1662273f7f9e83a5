//! A CSV export of values a spreadsheet would run as formulas writes them escaped (a `'`
//! in front), and `trailctl verify-export` still verifies it.
//!
//! Steps:
//! 1. start a node and record events whose ids, names, action and user agent start with
//!    `=`, `+`, `-`, `@` and `'`;
//! 2. export the tenant as CSV and as JSON lines;
//! 3. check no CSV cell starts with a formula character, the escaped spellings are
//!    there, and the JSON lines hold the values as recorded;
//! 4. verify both exports; an escaped cell with its `'` removed fails verification.

use std::path::Path;
use std::process::Output;

use trail_proto::v1;
use trail_tests::{event, Traild};

fn trailctl(node: &Traild, args: &[&str]) -> Output {
    let mut command = trail_tests::trailctl();
    command.arg("--endpoint").arg(node.endpoint());
    command.env_remove("TRAIL_VERIFIER_KEY");
    command.args(args).output().expect("run trailctl")
}

fn expect_exit(output: &Output, code: i32, what: &str) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn export(node: &Traild, key: &str, out: &Path, format: &str) {
    let output = trailctl(
        node,
        &[
            "export",
            "--quiet",
            "--tenant",
            "ten_formula",
            "--key",
            key,
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    expect_exit(&output, 0, &format!("export {format}"));
}

fn verify(node: &Traild, key: &str, records: &Path, bundle: &Path) -> Output {
    trailctl(
        node,
        &[
            "verify-export",
            "--quiet",
            records.to_str().unwrap(),
            "--bundle",
            bundle.to_str().unwrap(),
            "--key",
            key,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_export_escapes_formula_cells_and_still_verifies() {
    let data = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(data.path(), &["--seal-interval-ms", "100"]).await;
    let key = node.status().await.verifier_key;
    let mut client = node.client().await.expect("connect");

    let mut formula = event("ten_formula", "evt_formula");
    let actor = formula.actor.as_mut().unwrap();
    actor.id = "=HYPERLINK(\"http://attacker.example\",\"x\")".into();
    actor.name = "+cmd|' /C calc'!A0".into();
    actor.email = "@SUM(1+1)".into();
    formula.action = "-auth.login".into();
    formula.resource.as_mut().unwrap().id = "'quoted".into();
    formula.user_agent = "=1+2".into();
    let plain = event("ten_formula", "evt_plain");
    let response = client
        .record_batch(v1::RecordBatchRequest {
            events: vec![formula, plain],
        })
        .await
        .expect("record")
        .into_inner();
    assert_eq!(response.accepted, 2, "{response:?}");

    let out = tempfile::tempdir().expect("temporary directory");
    let csv = out.path().join("formula.csv");
    let jsonl = out.path().join("formula.jsonl");
    export(&node, &key, &csv, "csv");
    export(&node, &key, &jsonl, "jsonl");

    let text = std::fs::read_to_string(&csv).expect("read the CSV export");
    for line in text.lines().skip(1) {
        for cell in line.split(',') {
            let unquoted = cell.strip_prefix('"').unwrap_or(cell);
            assert!(
                !unquoted.starts_with(['=', '+', '-', '@']),
                "a cell a spreadsheet would run: {cell:?} in {line}"
            );
        }
    }
    for escaped in [
        "\"'=HYPERLINK(\"\"http://attacker.example\"\",\"\"x\"\")\"",
        ",'@SUM(1+1),",
        ",'+cmd|' /C calc'!A0,",
        ",'-auth.login,",
        ",''quoted,",
        ",'=1+2,",
    ] {
        assert!(text.contains(escaped), "{escaped} not in:\n{text}");
    }
    let json = std::fs::read_to_string(&jsonl).expect("read the JSON export");
    assert!(json.contains(r#""action":"-auth.login""#), "{json}");
    assert!(json.contains(r#""id":"'quoted""#), "{json}");

    let csv_bundle = out.path().join("formula.csv.proof.jsonl");
    expect_exit(&verify(&node, &key, &csv, &csv_bundle), 0, "verify CSV");
    let jsonl_bundle = out.path().join("formula.jsonl.proof.jsonl");
    expect_exit(
        &verify(&node, &key, &jsonl, &jsonl_bundle),
        0,
        "verify JSON",
    );

    // The spelling is one to one: the same value without its escape is not accepted.
    let unescaped = out.path().join("unescaped.csv");
    std::fs::write(&unescaped, text.replace(",'=1+2,", ",=1+2,")).expect("write");
    let failed = verify(&node, &key, &unescaped, &csv_bundle);
    expect_exit(&failed, 1, "verify an unescaped CSV");
}
