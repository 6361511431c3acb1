//! What the integration tests share: running a reference script in the venv.

use std::path::Path;
use std::process::Command;

/// Runs `script` with the venv's Python in `dir` (the script's file is written there)
/// and returns its stdout; fails the test with the script's stderr when it fails.
pub fn run_python(dir: &Path, name: &str, script: &str) -> String {
    let script_path = dir.join(name);
    std::fs::write(&script_path, script).expect("write the reference script");
    let python = cardet_testkit::venv_python();
    let output = Command::new(&python)
        .arg(&script_path)
        .current_dir(dir)
        .env("YOLO_OFFLINE", "1")
        .env("YOLO_VERBOSE", "False")
        .env("YOLO_CONFIG_DIR", dir)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} (run `cargo xtask setup`): {error}",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "{name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A deterministic generator for fixtures (the crate's own, so fixtures never drift).
pub fn rng(seed: u64) -> cardet_detect::synth::Rng {
    cardet_detect::synth::Rng::new(seed)
}
