//! `trailctl --help` teaches: every command is listed with examples and exit codes.
//!
//! (Also makes `cargo test --workspace` build `target/<profile>/trailctl`, which the
//! end-to-end tests in `tests/` run.)

use std::process::Command;

#[test]
fn help_lists_commands_examples_and_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_trailctl"))
        .arg("--help")
        .output()
        .expect("run trailctl --help");
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).expect("utf-8 help");
    for word in [
        "ingest",
        "get",
        "tail",
        "status",
        "bench",
        "proof",
        "checkpoint",
        "verify",
        "query",
        "count",
        "reindex",
        "export",
        "verify-export",
        "api-key",
        // Every call carries a token; where it comes from.
        "--token-file",
        "TRAIL_TOKEN",
        "admin.token",
        "Examples",
        "Exit codes",
        // --endpoint takes a cluster's nodes.
        "--endpoint http://10.0.0.7:7400,http://10.0.0.8:7400",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
}

#[test]
fn a_bad_flag_is_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_trailctl"))
        .args(["ingest", "--batch-size", "0", "x.jsonl"])
        .output()
        .expect("run trailctl");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("batch-size"),
        "error does not name the flag: {stderr}"
    );
}

#[test]
fn verifying_commands_explain_key_pinning() {
    for command in ["proof", "checkpoint", "verify"] {
        let output = Command::new(env!("CARGO_BIN_EXE_trailctl"))
            .args([command, "--help"])
            .output()
            .expect("run trailctl");
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).expect("utf-8 help");
        for word in [
            "--key",
            "--key-file",
            "TRAIL_VERIFIER_KEY",
            "Examples",
            "Exit code",
        ] {
            assert!(
                help.contains(word),
                "{command} --help does not mention {word}:\n{help}"
            );
        }
    }
}

#[test]
fn verify_without_a_target_names_the_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_trailctl"))
        .args(["--endpoint", "http://127.0.0.1:1", "verify"])
        .output()
        .expect("run trailctl");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tenant") && stderr.contains("--checkpoint"),
        "{stderr}"
    );
}
