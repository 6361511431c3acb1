//! `cargo xtask doctor` as a user runs it.

use std::process::Command;

/// With `CARDET_HOME` pointing at an empty folder the doctor fails, names the
/// missing parts and the command that installs them.
#[test]
fn doctor_fails_naming_the_fix_on_an_empty_home() {
    let empty = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("doctor")
        .env("CARDET_HOME", empty.path())
        .output()
        .expect("running xtask doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "doctor passed on an empty CARDET_HOME:\n{stdout}"
    );
    assert!(
        stderr.contains("missing: python venv, torch"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("run `cargo xtask setup`"),
        "stderr: {stderr}"
    );
    assert!(
        stdout.contains("MISS libtorch (for tch)"),
        "stdout: {stdout}"
    );
}

/// On the machine `cargo xtask test` prepared, every part is present.
#[test]
fn doctor_passes_on_the_prepared_home() {
    let output = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["doctor", "--json"])
        .output()
        .expect("running xtask doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "doctor failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("doctor --json prints JSON");
    let torch = report["parts"]
        .as_array()
        .and_then(|parts| parts.iter().find(|part| part["part"] == "torch"));
    assert_eq!(
        torch
            .and_then(|part| part["version"].as_str())
            .map(|v| v.split('+').next()),
        Some(Some("2.13.0"))
    );
}
