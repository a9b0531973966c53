//! Without `nats-server`, asking for the cluster part fails at once, before any other part has
//! spent minutes: the check comes first.

use std::process::Command;

#[test]
fn a_missing_nats_server_fails_the_run_before_any_part_starts() {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stmp-bench-no-nats");
    let output = Command::new(env!("CARGO_BIN_EXE_stmp-bench"))
        .args(["--quick", "--only", "unary", "--only", "cluster", "--out"])
        .arg(&out)
        .env("NATS_SERVER", "/nonexistent/nats-server")
        .output()
        .expect("stmp-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "it ran without nats-server:\n{stderr}"
    );
    assert!(
        stderr.contains("needs nats-server"),
        "the error does not say what is missing:\n{stderr}"
    );
    assert!(
        !stderr.contains("unary request/response"),
        "the unary part ran before the check:\n{stderr}"
    );
    assert!(output.stdout.is_empty(), "a report was printed");
}
