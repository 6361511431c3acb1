//! `mwt` finds libtorch by itself: no LD_LIBRARY_PATH, no LIBTORCH.

use std::process::Command;

#[test]
fn mwt_starts_without_library_environment() {
    let output = Command::new(env!("CARGO_BIN_EXE_mwt"))
        .args(["info", "--json"])
        .env_remove("LIBTORCH")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .expect("running mwt");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "mwt info failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("mwt info --json prints JSON");
    assert_eq!(
        report["torch_version"]
            .as_str()
            .and_then(|v| v.split('+').next()),
        Some("2.13.0"),
        "{report}"
    );
    let library = report["libtorch"].as_str().unwrap_or_default();
    assert!(library.ends_with("torch/lib/libtorch_cpu.so"), "{report}");
}
