//! What a user sees at the edges: help with examples and one-line errors that name
//! the input. Neither needs a broker: the source is read before Kafka is reached.

use std::process::Command;

fn produce(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_produce"))
        .args(args)
        // A port nobody listens on, so nothing here can reach a real broker.
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .output()
        .expect("runs produce")
}

#[test]
fn help_shows_examples() {
    let output = produce(&["--help"]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("produce stream"), "{help}");
}

#[test]
fn a_missing_folder_is_one_line_naming_it_and_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-dataset");
    let missing = missing.to_str().expect("utf-8 path");
    let output = produce(&["stream", missing, "--quiet"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.trim();
    assert_eq!(line.lines().count(), 1, "{stderr}");
    assert!(line.starts_with("produce: "), "{stderr}");
    assert!(line.contains(missing), "{stderr}");
    // The OS reason once, not repeated by the error chain.
    assert_eq!(line.matches("No such file").count(), 1, "{stderr}");
}
